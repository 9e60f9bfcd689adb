"""One stdio session in process: real pipes, the real SDK server over fake adapters."""

from __future__ import annotations

import datetime
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp_types
import pytest

from server.envelope import Request
from server.jsonparse import INLINE_MAX
from server.stdio import session as session_module
from server.stdio.front import Pipes, Replay, fresh_handover
from server.stdio.handshake import HandshakeCache
from server.stdio.session import Session, StdioOptions
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server

pytestmark = pytest.mark.anyio
ROUTES = {"routes": {"embed": ["a/m"], "chat": ["a"], "rerank": ["a"]}}
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}


def rpc(**msg: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **msg}).encode() + b"\n"


def embed(request_id: object, text: str = "hello") -> bytes:
    return rpc(id=request_id, method="tools/call", params={"name": "embed", "arguments": {"input": text}})


HANDSHAKE = rpc(id=0, method="initialize", params=INIT) + rpc(method="notifications/initialized")


async def run_session(
    tmp_path: Path,
    send: Callable[[int], None],
    adapter: FakeAdapter | None = None,
    cap: int = 1 << 20,
    grace_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Serve one session; `send(fd)` writes the client's side (and closes it). Returns every answer."""
    server, _ = fake_server(tmp_path, {"a": adapter or FakeAdapter("a")}, routes=ROUTES)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(out_r, 1 << 16):
            received.extend(chunk)

    threads = [threading.Thread(target=send, args=(in_w,)), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    handover = fresh_handover(HandshakeCache(tmp_path / "h.json", "fp", None), cap)
    try:
        with anyio.fail_after(30):
            await Session(handover, Pipes(in_r, out_w), StdioOptions(cap, grace_s=grace_s)).run(server)
    finally:
        os.close(out_w)
        os.close(in_r)
        for t in threads:
            t.join(10)
        os.close(out_r)
    messages = [json.loads(line) for line in received.splitlines()]
    return [m for m in messages if "method" not in m]  # the answers (log notifications to the session left out)


def writes(*chunks: bytes, hold_s: float = 0.0) -> Callable[[int], None]:
    def send(fd: int) -> None:
        for chunk in chunks:
            os.write(fd, chunk)
        if hold_s:
            threading.Event().wait(hold_s)
        os.close(fd)

    return send


async def test_every_line_is_parsed_once_and_the_sdk_receives_the_parsed_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    for name in ("parse_small", "parse_large"):
        real = getattr(session_module, name)
        monkeypatch.setattr(session_module, name, lambda data, real=real: parsed.append(len(data)) or real(data))

    def no_second_parse(*args: object, **kwargs: object) -> object:
        raise AssertionError("a message was parsed again from JSON text")

    monkeypatch.setattr(mcp_types.jsonrpc_message_adapter, "validate_json", no_second_parse)
    large = embed(5, "a" * INLINE_MAX)
    lines = [HANDSHAKE, rpc(id=1, method="tools/list"), embed(2), rpc(id=3, method="ping"), large, b"{broken\n"]
    answers = await run_session(tmp_path, writes(*lines))
    assert len(parsed) == sum(chunk.count(b"\n") for chunk in lines)
    assert max(parsed) == len(large) - 1
    by_id = {a.get("id"): a for a in answers}
    assert {0, 1, 2, 3, 5, None} <= set(by_id)
    assert not by_id[2]["result"].get("isError") and by_id[3]["result"] == {}
    assert by_id[5]["result"]["isError"]  # over the tool's text limit: a tool error, from the parsed object
    assert by_id[None]["error"]["code"] == -32700


async def test_a_line_over_the_cap_is_refused_under_its_id_and_the_session_goes_on(tmp_path: Path) -> None:
    over = rpc(id="big", method="tools/call", params={"name": "embed", "arguments": {"input": "x" * 5000}})
    answers = await run_session(tmp_path, writes(HANDSHAKE, over, rpc(id="after", method="ping")), cap=4096)
    by_id = {a["id"]: a for a in answers}
    assert by_id["big"]["error"]["code"] == -32600 and "4096 bytes" in by_id["big"]["error"]["message"]
    assert by_id["after"]["result"] == {}


async def test_requests_beyond_the_in_flight_limit_are_refused_as_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "MAX_PENDING", 3)
    slow = FakeAdapter("a")
    slow.delay_s = 0.5
    answers = await run_session(tmp_path, writes(HANDSHAKE, *(embed(n) for n in range(1, 7))), adapter=slow)
    outcomes = {a["id"]: a for a in answers if a["id"] != 0}
    assert set(outcomes) == set(range(1, 7))
    busy = [n for n, a in outcomes.items() if "error" in a and a["error"]["code"] == -32000]
    served = [n for n, a in outcomes.items() if "result" in a and not a["result"].get("isError")]
    assert busy and served and len(busy) + len(served) == 6


async def test_end_of_input_lets_calls_in_flight_finish_before_the_session_ends(tmp_path: Path) -> None:
    slow = FakeAdapter("a")
    slow.delay_s = 0.3
    answers = await run_session(tmp_path, writes(HANDSHAKE, embed(1), embed(2)), adapter=slow)
    results = {a["id"]: a for a in answers if a["id"] in (1, 2)}
    assert all("result" in a and not a["result"].get("isError") for a in results.values()) and len(results) == 2


async def test_a_cancelled_request_does_not_hold_up_the_end_and_calls_past_the_grace_are_answered(
    tmp_path: Path,
) -> None:
    stuck = FakeAdapter("a")
    stuck.delay_s = 60
    cancel = rpc(method="notifications/cancelled", params={"requestId": 1})
    answers = await run_session(tmp_path, writes(HANDSHAKE, embed(1), cancel, embed(2)), adapter=stuck, grace_s=0.2)
    by_id = {a["id"]: a for a in answers}
    assert 1 not in by_id  # cancelled by the client: never answered, as MCP says
    assert by_id[2]["error"]["code"] == -32000  # still running after the grace: cancelled, and told so


async def test_a_stale_early_answer_to_a_2026_era_client_is_published_to_listen_streams(tmp_path: Path) -> None:
    server, _ = fake_server(tmp_path, {"a": FakeAdapter("a")}, routes=ROUTES)
    heard: list[object] = []
    server._subscriptions.subscribe(heard.append)
    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    modern = {"_meta": envelope}
    handover = fresh_handover(HandshakeCache(tmp_path / "h.json", "fp", None), 1 << 20)
    private = "model-gateway/verify/0"
    message = {"jsonrpc": "2.0", "id": private, "method": "tools/list", "params": modern}
    handover.replay.append(Replay(Request(private, "tools/list", message), from_client=False))
    handover.recorder.expect(private, "tools/list|2026-07-28", drop=True, given={"tools": []}, modern=True)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.close(in_w)  # the client sends nothing more
    with anyio.fail_after(30):
        await Session(handover, Pipes(in_r, out_w), StdioOptions(1 << 20)).run(server)
    for fd in (in_r, out_w):
        os.close(fd)
    os.set_blocking(out_r, False)
    try:
        written = os.read(out_r, 1 << 16)
    except BlockingIOError:
        written = b""
    os.close(out_r)
    assert written == b""  # the private answer never reaches the client
    assert [type(event).__name__ for event in heard] == ["ToolsListChanged"]


@pytest.mark.parametrize(
    "result",
    [
        {"content": [{"type": "text", "text": "é \u2028 \x01"}], "structuredContent": {"v": [0.1, 1e-7, -0.0, 3.0]}},
        {"when": datetime.datetime(2026, 1, 2, 3, 4, 5), "big": 2**70},
    ],
)
def test_an_answer_line_is_the_json_of_the_sdk_message_whichever_encoder_writes_it(result: dict[str, Any]) -> None:
    message = mcp_types.JSONRPCResponse(jsonrpc="2.0", id=7, result=result)
    line = session_module._dump(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == json.loads(message.model_dump_json(by_alias=True, exclude_unset=True))
