"""The fast start's front loop, without processes: what it answers, what it queues, what it refuses."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.envelope import Notification, Request
from server.jsonparse import INLINE_MAX
from server.stdio.front import VERIFY_ID_PREFIX, Front, StopSignals, line_cap
from server.stdio.handshake import HandshakeCache, key
from server.stdio.lines import LineSplitter

TOOLS = {"tools": [{"name": "embed", "inputSchema": {"type": "object"}}]}
INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"tools": {"listChanged": True}},
    "serverInfo": {"name": "model-gateway", "version": "0"},
}


def rpc(msg: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **msg}).encode() + b"\n"


def init_request(request_id: int = 1, version: str = "2025-11-25") -> bytes:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    return rpc({"id": request_id, "method": "initialize", "params": params})


@pytest.fixture
def out() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def written(fd: int) -> list[dict[str, Any]]:
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 1 << 20)
    except BlockingIOError:
        return []
    return [json.loads(line) for line in data.splitlines()]


def front(tmp_path: Path, out_fd: int, answers: dict[str, Any] | None = None, cap: int = 1 << 20) -> Front:
    cache = HandshakeCache(tmp_path / "handshake.json", "fp", None, dict(answers or {}))
    return Front(cache, out_fd, LineSplitter(cap))


def replayed(f: Front) -> list[Any]:
    return [r.item for r in f.handover(StopSignals(), eof=False).replay]


def test_front_answers_initialize_and_tools_list_from_the_cache_and_queues_the_rest_parsed(
    tmp_path: Path, out: tuple[int, int]
) -> None:
    f = front(tmp_path, out[1], {key("initialize", "2025-11-25"): INIT, key("tools/list", "2025-11-25"): TOOLS})
    call = rpc({"id": 3, "method": "tools/call", "params": {"name": "embed", "arguments": {"input": "x"}}})
    stream = init_request() + rpc({"method": "notifications/initialized"}) + rpc({"id": 2, "method": "tools/list"})
    stream += call + b'{"jsonrpc": "2.0", "id": 4, "meth'
    for i in range(0, len(stream), 7):  # lines arrive in pieces
        f.feed(stream[i : i + 7])
    assert [(a["id"], a["result"]) for a in written(out[0])] == [(1, INIT), (2, TOOLS)]
    handover = f.handover(StopSignals(), eof=False)
    items = [r.item for r in handover.replay]
    assert all(isinstance(i, Request | Notification) for i in items)  # parsed once, here
    assert [i.method for i in items] == ["initialize", "notifications/initialized", "tools/list", "tools/call"]
    assert isinstance(items[2], Request) and items[2].id == f"{VERIFY_ID_PREFIX}0"
    assert [r.from_client for r in handover.replay] == [False, False, False, True]
    assert handover.splitter.holding == len(b'{"jsonrpc": "2.0", "id": 4, "meth')
    assert set(handover.recorder.pending) == {1, f"{VERIFY_ID_PREFIX}0"}
    assert handover.recorder.list_changed == frozenset({"tools"})


def test_front_answers_the_resource_and_prompt_lists_hosts_ask_for_at_start(
    tmp_path: Path, out: tuple[int, int]
) -> None:
    resources = {"resources": [{"uri": "gateway://health", "name": "health"}]}
    prompts: dict[str, Any] = {"prompts": []}
    answers = {key("initialize", "2025-11-25"): INIT, key("resources/list", "2025-11-25"): resources}
    f = front(tmp_path, out[1], {**answers, key("prompts/list", "2025-11-25"): prompts})
    f.feed(init_request() + rpc({"id": 2, "method": "resources/list"}) + rpc({"id": 3, "method": "prompts/list"}))
    f.feed(rpc({"id": 4, "method": "resources/templates/list"}))  # not recorded yet: the server answers it
    assert [(a["id"], a["result"]) for a in written(out[0])] == [(1, INIT), (2, resources), (3, prompts)]
    assert replayed(f)[-1].id == 4


def test_front_defers_everything_after_an_initialize_it_has_no_answer_for(tmp_path: Path, out: tuple[int, int]) -> None:
    f = front(tmp_path, out[1], {key("initialize", "2025-11-25"): INIT, key("tools/list", "2025-11-25"): TOOLS})
    f.feed(init_request(version="2099-01-01") + rpc({"id": 2, "method": "tools/list"}))
    assert written(out[0]) == []
    handover = f.handover(StopSignals(), eof=False)
    assert all(r.from_client for r in handover.replay) and not handover.recorder.pending
    assert len(handover.replay) == 2


def test_front_answers_ping_and_modern_requests_by_their_envelope_version(tmp_path: Path, out: tuple[int, int]) -> None:
    modern = {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
    discover = {"supportedVersions": ["2026-07-28"]}
    f = front(
        tmp_path, out[1], {key("server/discover", "2026-07-28"): discover, key("tools/list", "2026-07-28"): TOOLS}
    )
    f.feed(rpc({"id": "p", "method": "ping"}))
    f.feed(rpc({"id": 1, "method": "server/discover", "params": modern}))
    f.feed(rpc({"id": 2, "method": "tools/list", "params": modern}))
    f.feed(rpc({"id": 3, "method": "tools/list"}))  # no version known: the server answers it
    assert [(a["id"], a["result"]) for a in written(out[0])] == [("p", {}), (1, discover), (2, TOOLS)]
    assert [i.id for i in replayed(f)] == [f"{VERIFY_ID_PREFIX}0", f"{VERIFY_ID_PREFIX}1", 3]


def test_front_answers_hostile_lines_at_once_with_json_rpc_errors_and_never_raises(
    tmp_path: Path, out: tuple[int, int]
) -> None:
    f = front(tmp_path, out[1], {key("initialize", "2025-11-25"): INIT})
    hostile = [
        b"[" * 2048,  # deeper than any parser limit
        b'{"jsonrpc":"2.0","id":"x","method":"initialize","params":{"a":' + b"[" * 1000 + b"]" * 1000 + b"}}",
        b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":true,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":"\xff","method":"ping"}',
        b'{"jsonrpc":"2.0","id":7,"method":"' + b"m" * 5000 + b'"}',
        b"[]",
    ]
    f.feed(b"\n".join(hostile) + b"\n")
    answers = written(out[0])
    assert len(answers) == len(hostile)
    assert all("error" in a for a in answers)
    assert [a["id"] for a in answers] == [None, "x", None, None, None, None, 7, None]
    assert answers[1]["error"]["code"] == -32600 and "200 levels" in answers[1]["error"]["message"]
    assert answers[2]["error"]["code"] == -32700  # NaN is not JSON
    assert all(len(json.dumps(a)) < 300 for a in answers)  # nothing of the input comes back
    assert not f.waiting()


def test_front_answers_an_over_long_line_under_its_id_without_holding_it(tmp_path: Path, out: tuple[int, int]) -> None:
    f = front(tmp_path, out[1], cap=4096)
    f.feed(b'{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"x":"')
    for _ in range(10):
        f.feed(b"a" * 4096)
        assert f.splitter.holding <= 4096
    f.feed(b'"}}\n' + rpc({"id": 42, "method": "ping"}))
    answers = written(out[0])
    assert (
        answers[0]["id"] == 41
        and answers[0]["error"]["code"] == -32600
        and "4096 bytes" in answers[0]["error"]["message"]
    )
    assert answers[1] == {"jsonrpc": "2.0", "id": 42, "result": {}}


def test_front_queues_large_lines_unparsed_and_defers_what_follows(tmp_path: Path, out: tuple[int, int]) -> None:
    f = front(tmp_path, out[1], {key("initialize", "2025-11-25"): INIT}, cap=4 * INLINE_MAX)
    big = rpc({"id": 5, "method": "tools/call", "params": {"name": "embed", "arguments": {"input": "a" * INLINE_MAX}}})
    f.feed(big + rpc({"id": 6, "method": "ping"}))
    assert written(out[0]) == []  # the ping waits behind the large line: order is kept
    items = replayed(f)
    assert items[0] == big.rstrip(b"\n") and isinstance(items[0], bytes)
    assert isinstance(items[1], bytes)


def test_front_refuses_what_waits_when_stopped_before_the_handover(tmp_path: Path, out: tuple[int, int]) -> None:
    f = front(tmp_path, out[1], cap=4 * INLINE_MAX)
    big = rpc(
        {"id": "big", "method": "tools/call", "params": {"name": "embed", "arguments": {"input": "a" * INLINE_MAX}}}
    )
    f.feed(init_request(9) + rpc({"method": "notifications/initialized"}) + big)
    f.refuse_queued()
    answers = written(out[0])
    assert {(a["id"], a["error"]["code"]) for a in answers} == {(9, -32000), ("big", -32000)}
    assert not f.waiting()


def test_the_line_cap_from_the_environment_is_used_only_when_it_is_a_sane_number() -> None:
    assert line_cap({"MODEL_GATEWAY_MAX_LINE_BYTES": "65536"}) == 65536
    assert line_cap({"MODEL_GATEWAY_MAX_LINE_BYTES": "-5"}) is None
    assert line_cap({"MODEL_GATEWAY_MAX_LINE_BYTES": "12"}) is None
    assert line_cap({}) is None
