"""The stdio fast start (front loop, recorder) and the stdio wire (line reader and writer), without processes."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from server.stdio_front import VERIFY_ID_PREFIX, Front, HandshakeCache, Recorder, fingerprint, key
from server.stdio_wire import LineReader, LineWriter

pytestmark = pytest.mark.anyio

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


def response(request_id: Any, result: dict[str, Any]) -> bytes:
    # the SDK's own key order: jsonrpc, id, result
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}, separators=(",", ":")).encode() + b"\n"


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


def cache(tmp_path: Path, answers: dict[str, Any] | None = None) -> HandshakeCache:
    return HandshakeCache(tmp_path / "handshake.json", "fp", dict(answers or {}))


def test_front_answers_initialize_and_tools_list_from_the_cache_and_queues_the_rest(
    tmp_path: Path, out: tuple[int, int]
) -> None:
    c = cache(tmp_path, {key("initialize", "2025-11-25"): INIT, key("tools/list", "2025-11-25"): TOOLS})
    front = Front(c, out[1])
    call = rpc({"id": 3, "method": "tools/call", "params": {"name": "embed", "arguments": {"input": "x"}}})
    stream = init_request() + rpc({"method": "notifications/initialized"}) + rpc({"id": 2, "method": "tools/list"})
    stream += call + b'{"jsonrpc": "2.0", "id": 4, "meth'
    for i in range(0, len(stream), 7):  # lines arrive in pieces
        front.feed(stream[i : i + 7])
    answers = written(out[0])
    assert [(a["id"], a["result"]) for a in answers] == [(1, INIT), (2, TOOLS)]
    handover = front.handover()
    lines = [json.loads(line) for line, _ in handover.replay]
    assert [m.get("method") for m in lines] == ["initialize", "notifications/initialized", "tools/list", "tools/call"]
    assert lines[2]["id"] == f"{VERIFY_ID_PREFIX}0"  # the answered request, replayed under a private id
    assert [observe for _, observe in handover.replay] == [False, False, False, True]
    assert handover.pending == b'{"jsonrpc": "2.0", "id": 4, "meth'
    assert set(handover.recorder.pending) == {1, f"{VERIFY_ID_PREFIX}0"}


def test_front_answers_the_resource_and_prompt_lists_hosts_ask_for_at_start(
    tmp_path: Path, out: tuple[int, int]
) -> None:
    resources = {"resources": [{"uri": "gateway://health", "name": "health"}]}
    prompts: dict[str, Any] = {"prompts": []}
    answers = {key("initialize", "2025-11-25"): INIT, key("resources/list", "2025-11-25"): resources}
    front = Front(cache(tmp_path, {**answers, key("prompts/list", "2025-11-25"): prompts}), out[1])
    front.feed(init_request() + rpc({"id": 2, "method": "resources/list"}) + rpc({"id": 3, "method": "prompts/list"}))
    front.feed(rpc({"id": 4, "method": "resources/templates/list"}))  # not recorded yet: the server answers it
    assert [(a["id"], a["result"]) for a in written(out[0])] == [(1, INIT), (2, resources), (3, prompts)]
    handover = front.handover()
    assert [json.loads(line).get("id") for line, _ in handover.replay][-1] == 4
    assert handover.recorder.list_changed == frozenset({"tools"})  # what INIT declared


def test_front_defers_everything_after_an_initialize_it_has_no_answer_for(tmp_path: Path, out: tuple[int, int]) -> None:
    c = cache(tmp_path, {key("initialize", "2025-11-25"): INIT, key("tools/list", "2025-11-25"): TOOLS})
    front = Front(c, out[1])
    front.feed(init_request(version="2099-01-01") + rpc({"id": 2, "method": "tools/list"}))
    assert written(out[0]) == []
    handover = front.handover()
    assert [json.loads(line)["id"] for line, _ in handover.replay] == [1, 2]
    assert all(observe for _, observe in handover.replay) and not handover.recorder.pending


def test_front_answers_ping_and_modern_requests_by_their_envelope_version(tmp_path: Path, out: tuple[int, int]) -> None:
    modern = {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
    discover = {"supportedVersions": ["2026-07-28"]}
    c = cache(tmp_path, {key("server/discover", "2026-07-28"): discover, key("tools/list", "2026-07-28"): TOOLS})
    front = Front(c, out[1])
    front.feed(rpc({"id": "p", "method": "ping"}))
    front.feed(rpc({"id": 1, "method": "server/discover", "params": modern}))
    front.feed(rpc({"id": 2, "method": "tools/list", "params": modern}))
    front.feed(rpc({"id": 3, "method": "tools/list"}))  # no version known: the server answers it
    assert [(a["id"], a["result"]) for a in written(out[0])] == [("p", {}), (1, discover), (2, TOOLS)]
    replay = [json.loads(line) for line, _ in front.handover().replay]
    assert [m["id"] for m in replay] == [f"{VERIFY_ID_PREFIX}0", f"{VERIFY_ID_PREFIX}1", 3]


def test_recorder_records_answers_and_keeps_the_wire_untouched(tmp_path: Path) -> None:
    c = cache(tmp_path)
    rec = Recorder(c)
    rec.inbound(init_request(7))
    assert rec.outbound(response(7, INIT)) == response(7, INIT)
    rec.inbound(rpc({"id": 8, "method": "tools/list"}))
    rec.inbound(rpc({"id": 9, "method": "tools/list", "params": {"cursor": "next"}}))  # later pages are not kept
    assert rec.outbound(response(8, TOOLS)) == response(8, TOOLS)
    assert rec.pending == {}
    saved = json.loads(c.path.read_text())
    assert saved["answers"] == {key("initialize", "2025-11-25"): INIT, key("tools/list", "2025-11-25"): TOOLS}
    unrelated = response(10, {"content": []})
    assert rec.outbound(unrelated) is unrelated


def test_recorder_drops_private_answers_and_reports_a_stale_tools_list(tmp_path: Path) -> None:
    stale = {"tools": [{"name": "gone", "inputSchema": {"type": "object"}}]}
    c = cache(tmp_path, {key("tools/list", "2025-11-25"): stale})
    rec = Recorder(c, "2025-11-25", list_changed=frozenset({"tools"}))
    rec.expect(f"{VERIFY_ID_PREFIX}0", key("tools/list", "2025-11-25"), drop=True, given=stale)
    notice = rec.outbound(response(f"{VERIFY_ID_PREFIX}0", TOOLS))
    assert notice is not None and json.loads(notice) == {
        "jsonrpc": "2.0",
        "method": "notifications/tools/list_changed",
    }
    assert c.answers[key("tools/list", "2025-11-25")] == TOOLS and rec.changed == [key("tools/list", "2025-11-25")]
    assert json.loads(c.path.read_text())["answers"][key("tools/list", "2025-11-25")] == TOOLS
    fresh = cache(tmp_path, {key("tools/list", "2025-11-25"): TOOLS})
    quiet = Recorder(fresh, "2025-11-25", list_changed=frozenset({"tools"}))
    quiet.expect(f"{VERIFY_ID_PREFIX}0", key("tools/list", "2025-11-25"), drop=True, given=TOOLS)
    assert quiet.outbound(response(f"{VERIFY_ID_PREFIX}0", TOOLS)) is None and not quiet.changed
    # each list announces itself, and only where the client was told it may change
    for told, expected in ((frozenset({"resources"}), "notifications/resources/list_changed"), (frozenset(), None)):
        rec = Recorder(cache(tmp_path, {}), "2025-11-25", list_changed=told)
        rec.expect("r", key("resources/list", "2025-11-25"), drop=True, given={"resources": []})
        notice = rec.outbound(response("r", {"resources": [{"uri": "gateway://health", "name": "health"}]}))
        assert (json.loads(notice)["method"] if notice else None) == expected


def test_recorder_finds_its_answers_whatever_the_key_order(tmp_path: Path) -> None:
    rec = Recorder(cache(tmp_path), "2025-11-25")
    rec.expect(f"{VERIFY_ID_PREFIX}0", key("tools/list", "2025-11-25"), drop=True, given=TOOLS)
    reordered = json.dumps({"result": TOOLS, "id": f"{VERIFY_ID_PREFIX}0", "jsonrpc": "2.0"}).encode() + b"\n"
    assert rec.outbound(reordered) is None and rec.pending == {}


def test_a_cache_with_another_fingerprint_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "handshake.json"
    HandshakeCache(path, "one", {key("tools/list", "x"): TOOLS}).save()
    assert HandshakeCache.load(path, "one").answers
    assert HandshakeCache.load(path, "two").answers == {}
    path.write_text("{not json")
    assert HandshakeCache.load(path, "one").answers == {}


def test_the_fingerprint_follows_options_and_environment_and_hides_secret_values() -> None:
    env = {"MODEL_GATEWAY_PRIVACY_MODE": "0", "MODEL_GATEWAY_AUTH_TOKEN": "s3cret", "PATH": "/bin"}
    base = fingerprint(["a"], env)
    assert base == fingerprint(["a"], {**env, "PATH": "/usr/bin"})
    assert base != fingerprint(["b"], env)
    assert base != fingerprint(["a"], {**env, "MODEL_GATEWAY_PRIVACY_MODE": "1"})
    assert base == fingerprint(["a"], {**env, "MODEL_GATEWAY_AUTH_TOKEN": "other"})  # only whether it is set


async def test_line_reader_replays_first_then_reads_whole_lines_from_a_pipe() -> None:
    r, w = os.pipe()
    seen: list[bytes] = []
    replay = [(b"replayed\n", False), (b"observed\n", True)]
    reader = LineReader(r, pending=b'{"a":', replay=replay, observe=seen.append)

    def feed() -> None:
        for piece in (b"1}\n", b'{"b"', b':2}\n{"c":3}'):
            os.write(w, piece)
        os.close(w)

    threading.Thread(target=feed).start()
    with anyio.fail_after(5):
        lines = [line async for line in reader]
    os.close(r)
    assert lines == ["replayed\n", "observed\n", '{"a":1}\n', '{"b":2}\n', '{"c":3}']
    assert seen == [b"observed\n", b'{"a":1}\n', b'{"b":2}\n', b'{"c":3}']


async def test_line_reader_reads_a_regular_file_through_a_worker_thread(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"one\ntwo\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        with anyio.fail_after(5):
            assert [line async for line in LineReader(fd)] == ["one\n", "two\n"]
    finally:
        os.close(fd)


async def test_line_writer_writes_small_lines_inline_large_ones_whole_and_applies_the_transform() -> None:
    r, w = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    writer = LineWriter(w, lambda data: None if data.startswith(b"drop") else data)
    big = "x" * 300_000 + "\n"
    with anyio.fail_after(10):
        await writer.write("small\n")
        await writer.write("drop me\n")
        await writer.write(big)
        await writer.flush()
    os.close(w)
    reader.join(5)
    os.close(r)
    assert bytes(received) == b"small\n" + big.encode()
