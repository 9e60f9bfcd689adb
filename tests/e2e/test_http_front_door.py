"""The HTTP server's own bounds, over raw sockets against the real process: slow headers, big or slow bodies."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from anyio.abc import SocketStream

from tests.support.mcp_http import headers, initialize_message, open_session, with_front_door
from tests.support.processes import http_gateway, ollama_manifests

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def closed_by_server(stream: SocketStream) -> bool:
    """Whether the server closes the connection without answering."""
    return await read_to_close(stream) == b""


async def read_to_close(stream: SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return data


def post_head(port: int, length: int) -> bytes:
    """The head of a POST /mcp announcing a body of `length` bytes."""
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers().items())
    return f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{fields}Content-Length: {length}\r\n\r\n".encode()


@pytest.fixture
def gateway(tmp_path: Path, ollama_url: str):  # type: ignore[no-untyped-def]
    manifests = with_front_door(
        ollama_manifests(tmp_path / "manifests", ollama_url),
        header_timeout_s=1.0,
        body_timeout_s=1.0,
        max_body_bytes=64 * 1024,
    )
    with http_gateway(tmp_path / "home", manifests, "streamable-http") as base:
        yield base


async def test_connections_whose_headers_never_complete_are_closed(gateway: str) -> None:
    address = urlsplit(gateway)
    assert address.hostname is not None and address.port is not None
    with anyio.fail_after(20):
        silent = await anyio.connect_tcp(address.hostname, address.port)
        dripping = await anyio.connect_tcp(address.hostname, address.port)
        async with silent, dripping, anyio.create_task_group() as tg:
            request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200

            async def drip() -> None:
                for byte in request:  # one byte every 50 ms: never a complete header block in time
                    await dripping.send(bytes([byte]))
                    await anyio.sleep(0.05)

            tg.start_soon(drip)
            assert await closed_by_server(silent)
            assert await closed_by_server(dripping)
            tg.cancel_scope.cancel()
        # the server still serves well-behaved clients, several requests on one connection
        async with httpx2.AsyncClient(timeout=5) as http:
            codes = [(await http.get(gateway + "/health")).status_code for _ in range(3)]
    assert codes == [200, 200, 200]


async def test_a_body_over_the_cap_is_refused_from_its_declared_length(gateway: str) -> None:
    address = urlsplit(gateway)
    assert address.hostname is not None and address.port is not None
    with anyio.fail_after(20):
        async with await anyio.connect_tcp(address.hostname, address.port) as stream:
            announced = 50 * 1024 * 1024
            await stream.send(post_head(address.port, announced))
            reply = await read_to_close(stream)  # none of the 50 MiB announced was sent
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert "65536" in body["error"]["message"] and "http_server.max_body_bytes" in body["error"]["message"]


async def test_a_body_that_trickles_in_is_refused_and_the_server_keeps_serving(gateway: str) -> None:
    address = urlsplit(gateway)
    assert address.hostname is not None and address.port is not None
    body = json.dumps(initialize_message()).encode()
    with anyio.fail_after(20):
        async with await anyio.connect_tcp(address.hostname, address.port) as stream:
            await stream.send(post_head(address.port, len(body)))
            await stream.send(body[:10])  # the rest never comes
            reply = await read_to_close(stream)
        async with httpx2.AsyncClient(timeout=5) as http:
            sid = await open_session(http, gateway + "/mcp")
    assert reply.startswith(b"HTTP/1.1 408")
    assert sid
