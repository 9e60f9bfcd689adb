from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from mcp.server.transport_security import TransportSecuritySettings

from server.envelope import MAX_NAME_CHARS, Request
from server.http_guard import REQUEST_KEY, BodyLimits, HostCheck, HostOriginGuard, RequestGuard, RequestState
from server.jsonparse import INLINE_MAX

pytestmark = pytest.mark.anyio

Message = dict[str, Any]
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
SECURITY = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1:*", "gw.example.org"],
    allowed_origins=["http://127.0.0.1:*", "https://gw.example.org"],
)


def scope(method: str = "POST", path: str = "/mcp", **headers: str) -> dict[str, Any]:
    hdrs = [(k.replace("_", "-").encode(), v.encode()) for k, v in {"host": "127.0.0.1:8765", **headers}.items()]
    return {"type": "http", "method": method, "path": path, "headers": hdrs, "query_string": b""}


class Inner:
    """An ASGI app that records what reached it and answers 200 with what it read."""

    def __init__(self, answer: Callable[[], Awaitable[None]] | None = None) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []
        self.answer = answer
        self.cancelled = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        message = await receive()
        self.bodies.append(message.get("body", b""))
        try:
            if self.answer is not None:
                await self.answer()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def drive(app: Any, sc: dict[str, Any], incoming: list[Message], then: Message | None = None) -> list[Message]:
    """Feed `incoming` to the app; after it, `then` (None: the client waits silently)."""
    queue = list(incoming)
    sent: list[Message] = []

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then is None:
            await anyio.sleep_forever()
        return then  # type: ignore[return-value]

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(10):
        await app(sc, receive, send)
    return sent


def status(sent: list[Message]) -> int:
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def body_text(sent: list[Message]) -> str:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()


@pytest.mark.parametrize(
    ("host", "origin", "expected"),
    [
        ("127.0.0.1:8765", None, None),
        ("gw.example.org", "https://gw.example.org", None),
        ("127.0.0.1:8765", "http://127.0.0.1:3000", None),
        ("evil.example:8765", None, 421),
        ("127.0.0.1:evil", None, 421),
        ("127.0.0.1", None, 421),
        ("127.0.0.1:8765", "http://evil.example", 403),
        ("127.0.0.1:8765", "null", 403),
        ("127.0.0.1:8765", "http://127.0.0.1:80@evil", 403),
    ],
)
def test_the_host_check_takes_loopback_ports_and_named_hosts_only(
    host: str, origin: str | None, expected: int | None
) -> None:
    sc = scope(host=host, **({"origin": origin} if origin else {}))
    refusal = HostCheck(SECURITY).refusal(sc)
    assert (refusal.status_code if refusal else None) == expected


async def test_a_request_without_a_host_header_is_refused() -> None:
    inner = Inner()
    sc = scope()
    sc["headers"] = []
    sent = await drive(HostOriginGuard(inner, SECURITY), sc, [{"type": "http.request", "body": b""}])
    assert status(sent) == 421 and inner.calls == 0


async def test_a_refused_host_is_not_echoed_back() -> None:
    inner = Inner()
    sent = await drive(HostOriginGuard(inner, SECURITY), scope(path="/health", host="x" * 5000), [])
    assert status(sent) == 421 and "xxxx" not in body_text(sent) and inner.calls == 0


async def test_a_declared_body_over_the_cap_is_refused_before_any_of_it_is_read() -> None:
    inner = Inner()
    reads = 0

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 10, "more_body": True}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    guard = RequestGuard(inner, BodyLimits(max_bytes=1000, timeout_s=5))
    await guard(scope(content_length="1001"), receive, send)
    assert status(sent) == 413 and reads == 0 and inner.calls == 0
    reply = json.loads(body_text(sent))
    assert "1001 bytes" in reply["error"]["message"] and "1000" in reply["error"]["message"]
    assert (b"connection", b"close") in next(m for m in sent if m["type"] == "http.response.start")["headers"]


async def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_cap() -> None:
    inner = Inner()
    chunks = [{"type": "http.request", "body": b"x" * 400, "more_body": True} for _ in range(10)]
    sent = await drive(RequestGuard(inner, BodyLimits(max_bytes=1000, timeout_s=5)), scope(), chunks)
    assert status(sent) == 413 and inner.calls == 0


async def test_a_body_that_does_not_arrive_in_time_is_refused_with_408() -> None:
    inner = Inner()
    trickle = [{"type": "http.request", "body": b"x", "more_body": True}]
    sent = await drive(RequestGuard(inner, BodyLimits(max_bytes=1000, timeout_s=0.2)), scope(), trickle)
    assert status(sent) == 408 and inner.calls == 0


async def test_a_content_length_that_is_not_a_number_is_refused() -> None:
    inner = Inner()
    sent = await drive(RequestGuard(inner, BodyLimits(1000, 5)), scope(content_length="12abc"), [])
    assert status(sent) == 400 and inner.calls == 0


async def test_the_body_reaches_the_app_whole_in_one_message() -> None:
    inner = Inner()
    parts = [{"type": "http.request", "body": PING[:7], "more_body": True}, {"type": "http.request", "body": PING[7:]}]
    sent = await drive(RequestGuard(inner, BodyLimits(1000, 5)), scope(), parts)
    assert status(sent) == 200 and inner.bodies == [PING]


async def test_when_the_client_leaves_before_its_answer_the_hooks_run_and_the_request_is_cut() -> None:
    hooked = anyio.Event()
    states: list[RequestState] = []

    async def slow_answer() -> None:
        await anyio.sleep_forever()

    inner = Inner(slow_answer)

    async def app(sc: dict[str, Any], receive: Any, send: Any) -> None:
        states.append(sc[REQUEST_KEY])
        states[0].on_disconnect.append(hooked.set)
        await inner(sc, receive, send)

    async def server_sees_the_connection_drop() -> None:
        while not states:
            await anyio.lowlevel.checkpoint()
        states[0].client_left()  # what the HTTP server's protocol calls on connection_lost

    guard = RequestGuard(app, BodyLimits(1000, 5, cancel_grace_s=0.05))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server_sees_the_connection_drop)
        sent = await drive(guard, scope(), [{"type": "http.request", "body": PING}])
    assert hooked.is_set() and inner.cancelled and sent == []
    assert states[0].body == b""  # not kept past the request


async def test_a_disconnect_read_by_the_app_counts_as_the_client_leaving() -> None:
    seen: list[RequestState] = []

    async def app(sc: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(sc[REQUEST_KEY])
        await receive()  # the body
        await receive()  # a streaming response listens for the client leaving

    body = [{"type": "http.request", "body": b""}]
    await drive(RequestGuard(app, BodyLimits(1000, 5)), scope("GET"), body, then={"type": "http.disconnect"})
    assert seen[0].client_gone


async def test_a_request_answered_in_full_runs_no_disconnect_hook() -> None:
    hooks: list[str] = []

    async def app(sc: dict[str, Any], receive: Any, send: Any) -> None:
        sc[REQUEST_KEY].on_disconnect.append(lambda: hooks.append("ran"))
        await Inner()(sc, receive, send)

    sent = await drive(RequestGuard(app, BodyLimits(1000, 5)), scope(), [{"type": "http.request", "body": PING}])
    assert status(sent) == 200 and hooks == []


async def test_a_call_whose_client_leaves_is_cancelled_where_it_runs_and_unhooked() -> None:
    state = RequestState(b"")
    reached = anyio.Event()

    async def leave() -> None:
        await reached.wait()
        state.client_left()  # what the HTTP server's protocol calls on connection_lost

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leave)
            with state.hangup() as call:
                reached.set()
                await anyio.sleep_forever()
    assert call.cancelled_caught and state.on_disconnect == []


async def test_a_call_that_arrives_after_its_client_left_does_not_start() -> None:
    state = RequestState(b"")
    state.disconnected = True
    started = False
    with state.hangup() as call:
        await anyio.lowlevel.checkpoint()
        started = True
    assert call.cancelled_caught and not started


async def refused(body: bytes, path: str = "/mcp") -> tuple[int, Any, Inner]:
    inner = Inner()
    guard = RequestGuard(inner, BodyLimits(32 * 1024 * 1024, 5))
    sent = await drive(guard, scope(path=path), [{"type": "http.request", "body": body}])
    text = body_text(sent)
    return status(sent), json.loads(text) if text.startswith(("{", "[")) else text, inner


async def test_an_unknown_method_name_of_100_kb_is_answered_with_the_limit_and_never_echoed() -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "m" * 100_000}).encode()
    code, reply, inner = await refused(body)
    assert code == 400 and inner.calls == 0
    assert reply["id"] == 7 and str(MAX_NAME_CHARS) in reply["error"]["message"]
    assert "mmmm" not in json.dumps(reply) and len(json.dumps(reply)) < 300


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "Parse error"),
        (b"[" * 5000, "Invalid request"),
        (b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}', "Parse error"),
        (b'{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}', "request id"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' + b"t" * 5000 + b'"}}', "name longer"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', "params must be an object"),
        (b'{"id":1,"method":"ping"}', '"jsonrpc": "2.0"'),
        (b"\xff\xfe garbage", "Parse error"),
        (b"", "Parse error"),
    ],
)
async def test_a_message_that_breaks_the_envelope_rules_is_answered_here_with_the_rule(body: bytes, words: str) -> None:
    code, reply, inner = await refused(body)
    assert code == 400 and inner.calls == 0 and words in reply["error"]["message"]
    assert len(json.dumps(reply)) < 400


async def test_a_batch_gets_an_error_for_each_request_in_it() -> None:
    body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(3)]).encode()
    code, reply, inner = await refused(body)
    assert code == 400 and inner.calls == 0 and [r["id"] for r in reply] == [0, 1, 2]


async def test_a_message_that_passes_reaches_the_app_parsed_once_for_the_layers_below() -> None:
    seen: list[RequestState] = []

    async def app(sc: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(sc[REQUEST_KEY])
        assert isinstance(seen[0].message, Request) and seen[0].method == "initialize"
        await Inner()(sc, receive, send)

    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}).encode()
    sent = await drive(RequestGuard(app, BodyLimits(1000, 5)), scope(), [{"type": "http.request", "body": body}])
    assert status(sent) == 200 and seen[0].message is None  # let go of with the request


async def test_a_large_message_is_parsed_off_the_event_loop_by_the_same_rules() -> None:
    texts = ["x" * 1000] * (INLINE_MAX // 1000 + 10)
    good = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "embed", "arguments": {"input": texts}}}
    )
    code, _, inner = await refused(good.encode())
    assert code == 200 and inner.calls == 1
    bad = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "m" * 300, "params": {"pad": texts}}).encode()
    code, reply, inner = await refused(bad)
    assert code == 400 and inner.calls == 0 and reply["id"] == 2


async def test_bodies_on_other_paths_are_not_read_as_messages() -> None:
    code, text, inner = await refused(b"not json at all", path="/sse")
    assert code == 200 and inner.calls == 1 and text == "ok"
