"""The lean HTTP/1.1 client: kept-alive connections reused only while sound, every framing read strictly,
hostile heads and bodies refused as protocol errors, every wait bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from adapters import _http1
from adapters._http import HTTPUpstream, UpstreamOptions, as_is
from adapters.base import AdapterLimits
from adapters.errors import AdapterTimeoutError, AdapterUnavailableError, UpstreamStatusError
from tests.support.fake_ollama import FakeOllama
from tests.support.http1 import closed_port_url

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Script:
    """A loopback server that answers the n-th request with answers[n] (raw bytes), then keeps or drops the line."""

    answers: list[bytes]
    close_after: set[int] = field(default_factory=set)  # request indexes after which the server hangs up
    hold: float = 0.0  # seconds to sit on every request before answering
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
                )
                await reader.readexactly(length)
                n = len(self.heads)
                self.heads.append(head)
                await asyncio.sleep(self.hold)
                writer.write(self.answers[min(n, len(self.answers) - 1)])
                await writer.drain()
                if n in self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[str]:
    server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def pool(url: str, read_timeout_s: float = 5.0, max_connections: int = 4) -> _http1.Pool:
    limits = AdapterLimits(read_timeout_s=read_timeout_s, max_connections=max_connections)
    return _http1.Pool(url, {"Authorization": "Bearer k"}, limits)


async def body_of(answer: _http1.Answer) -> bytes:
    data = b""
    while piece := await answer.read():
        data += piece
    await answer.aclose()
    return data


async def exchange(client: _http1.Pool, path: str = "/api/embed", body: bytes | None = b"{}") -> tuple[int, bytes]:
    with anyio.fail_after(10):
        answer = await client.request("POST" if body is not None else "GET", path, body)
        return answer.status, await body_of(answer)


async def test_a_kept_alive_connection_carries_the_next_request_with_the_base_path_and_headers() -> None:
    script = Script([OK])
    async with serving(script) as url:
        client = pool(url + "/v1/")
        assert [await exchange(client, "/embeddings") for _ in range(3)] == [(200, b"{}")] * 3
        client.close()
    assert script.connections == 1
    first = script.heads[0].split(b"\r\n")
    assert first[0] == b"POST /v1/embeddings HTTP/1.1"
    assert (
        b"Authorization: Bearer k" in first and b"Content-Length: 2" in first and b"Accept-Encoding: identity" in first
    )


async def test_an_idle_connection_the_upstream_closed_is_replaced_before_it_is_used() -> None:
    script = Script([OK], close_after={0})
    async with serving(script) as url:
        client = pool(url)
        await exchange(client)
        await anyio.sleep(0.05)  # the server's FIN reaches the idle socket
        assert await exchange(client) == (200, b"{}")
        client.close()
    assert script.connections == 2


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
            200,
            b"abcde",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz", 200, b"xyz"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
    ],
)
async def test_chunked_interim_and_empty_answers_are_read_whole_and_the_connection_kept(
    answer: bytes, status: int, body: bytes
) -> None:
    script = Script([answer])
    async with serving(script) as url:
        client = pool(url)
        assert [await exchange(client) for _ in range(2)] == [(status, body)] * 2
        client.close()
    assert script.connections == 1


async def test_an_answer_without_length_is_read_to_the_close_and_its_connection_not_reused() -> None:
    script = Script([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"], close_after={0, 1})
    async with serving(script) as url:
        client = pool(url)
        assert [await exchange(client) for _ in range(2)] == [(200, b"until the end")] * 2
        client.close()
    assert script.connections == 2


async def test_bytes_past_the_body_keep_the_connection_out_of_the_pool() -> None:
    script = Script([OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged"])
    async with serving(script) as url:
        client = pool(url)
        assert [await exchange(client) for _ in range(2)] == [(200, b"{}")] * 2
        client.close()
    assert script.connections == 2


HOSTILE = {
    "not HTTP": b"SSH-2.0-OpenSSH\r\n\r\n",
    "status of two digits": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "folded header": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n continued\r\nContent-Length: 0\r\n\r\n",
    "header without colon": b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "space in a name": b"HTTP/1.1 200 OK\r\nContent Length: 2\r\n\r\n{}",
    "both framings": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
    "signed length": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}",
    "gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
    "other coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "chunk overrun": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n",
    "endless chunk line": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 10_000,
    "short body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
    "head over the cap": b"HTTP/1.1 200 OK\r\n" + b"X-A: " + b"a" * (70 << 10) + b"\r\n\r\n",
    "many headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 200 + b"\r\n",
    "switching protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    "hang up unanswered": b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_a_hostile_answer_is_a_protocol_error_and_the_next_call_is_served(name: str) -> None:
    script = Script([HOSTILE[name], OK], close_after={0})
    async with serving(script) as url:
        client = pool(url)
        with pytest.raises(_http1.TransportError) as caught:
            await exchange(client)
        assert caught.value.kind == "RemoteProtocolError" and not caught.value.timeout
        assert await exchange(client) == (200, b"{}")
        client.close()


async def test_every_wait_is_bounded_and_named_as_a_timeout() -> None:
    script = Script([OK])
    async with serving(script) as url:
        client = pool(url, read_timeout_s=0.2, max_connections=1)
        holder = await client.request("GET", "/", None)  # the only connection, not yet released
        with pytest.raises(_http1.TransportError, match="PoolTimeout"):
            await exchange(client)
        await holder.aclose()
        script.hold = 1.0
        with pytest.raises(_http1.TransportError, match="ReadTimeout") as caught:
            await exchange(client)
        assert caught.value.timeout
        client.close()


async def test_a_refused_connection_is_a_connect_error() -> None:
    client = pool(closed_port_url())
    with pytest.raises(_http1.TransportError, match="ConnectError"):
        await exchange(client)


async def test_a_call_cancelled_mid_answer_never_leaves_its_connection_in_the_pool() -> None:
    script = Script([OK], hold=0.5)
    async with serving(script) as url:
        client = pool(url)
        with anyio.move_on_after(0.1):
            await exchange(client)
        script.hold = 0.0
        assert await exchange(client) == (200, b"{}")
        client.close()
    assert script.connections == 2


@pytest.mark.parametrize(
    "bad",
    [
        lambda: pool("http://127.0.0.1:1").request("GET", "/a b", None),
        lambda: _http1.fixed_headers("h", {"X": "a\r\nY: b"}),
    ],
)
async def test_requests_the_client_would_mangle_are_refused_before_any_io(bad: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        result = bad()
        if asyncio.iscoroutine(result):
            await result


def test_only_plain_http_without_credentials_goes_through_the_lean_client() -> None:
    assert _http1.usable("http://127.0.0.1:11434") and _http1.usable("http://localhost:8080/v1")
    assert not _http1.usable("https://api.example.com") and not _http1.usable("http://u:p@h:1")


# --- through HTTPUpstream: the adapter errors as before ------------------------------------


async def test_the_upstream_maps_lean_client_failures_onto_the_adapter_errors() -> None:
    limits = AdapterLimits(read_timeout_s=0.2)
    dead = HTTPUpstream(closed_port_url(), limits, describe="test")
    with pytest.raises(AdapterUnavailableError, match="upstream unreachable"):
        await dead.call("GET", "/api/tags", "tags", parse=as_is)
    script = Script([b'HTTP/1.1 503 Busy\r\nRetry-After: 99\r\nContent-Length: 18\r\n\r\n{"error":"later"}\n'])
    async with serving(script) as url:
        busy = HTTPUpstream(url, limits, describe="test", options=UpstreamOptions())
        with pytest.raises(UpstreamStatusError, match="HTTP 503: later") as caught:
            await busy.call("GET", "/api/tags", "tags", parse=as_is)
        assert caught.value.retry_after_s == 99
        script.hold = 1.0
        with pytest.raises(AdapterTimeoutError, match=r"timed out \(ReadTimeout\)"):
            await busy.call("GET", "/api/tags", "tags", parse=as_is)
        await busy.aclose()


async def test_the_ollama_fake_is_served_through_the_lean_client_on_one_connection() -> None:
    with FakeOllama() as fake:
        http = HTTPUpstream(fake.url, AdapterLimits(), describe="test")
        for _ in range(3):
            answer = await http.call(
                "POST", "/api/embed", "embed", body={"model": "all-minilm", "input": ["x"]}, parse=as_is
            )
            assert len(answer["embeddings"][0]) == 384
        assert http._pool is not None and len(http._pool._idle) == 1
        await http.aclose()
