"""The recorder after the handover: it records the server's handshake answers and corrects stale early ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.envelope import Request
from server.stdio.front import VERIFY_ID_PREFIX
from server.stdio.handshake import HandshakeCache, key
from server.stdio.recorder import Recorder

TOOLS = {"tools": [{"name": "embed", "inputSchema": {"type": "object"}}]}
INIT = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {"listChanged": True}}, "serverInfo": {"name": "g"}}


def cache(tmp_path: Path, answers: dict[str, Any] | None = None) -> HandshakeCache:
    return HandshakeCache(tmp_path / "handshake.json", "fp", b"k" * 32, dict(answers or {}))


def request(request_id: str | int, method: str, params: dict[str, Any] | None = None) -> Request:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})}
    return Request(request_id, method, message)


def test_recorder_records_the_answers_and_leaves_the_wire_as_it_is(tmp_path: Path) -> None:
    rec = Recorder(cache(tmp_path))
    rec.inbound(request(7, "initialize", {"protocolVersion": "2025-11-25"}))
    rec.inbound(request(8, "tools/list"))  # pipelined: asked before the initialize answer is out
    rec.inbound(request(9, "tools/list", {"cursor": "next"}))  # later pages are not kept
    rec.inbound(request(10, "tools/call", {"name": "embed"}))
    assert set(rec.pending) == {7, 8}
    assert rec.outbound(7, INIT) == (True, b"")
    assert rec.outbound(8, TOOLS) == (True, b"")
    assert rec.cache.answers == {key("initialize", "2025-11-25"): INIT, key("tools/list", "2025-11-25"): TOOLS}
    assert rec.dirty and not rec.watching(10)


def test_recorder_does_not_record_an_error_or_an_answer_of_the_wrong_shape(tmp_path: Path) -> None:
    rec = Recorder(cache(tmp_path), "2025-11-25")
    rec.inbound(request(1, "tools/list"))
    rec.inbound(request(2, "initialize", {"protocolVersion": "2025-11-25"}))
    assert rec.outbound(1, None) == (True, b"")
    assert rec.outbound(2, {"protocolVersion": "2025-11-25"}) == (True, b"")  # no capabilities, no serverInfo
    assert rec.cache.answers == {} and not rec.dirty


def test_recorder_drops_private_answers_and_announces_a_stale_list(tmp_path: Path) -> None:
    stale = {"tools": [{"name": "gone", "inputSchema": {"type": "object"}}]}
    rec = Recorder(cache(tmp_path, {key("tools/list", "2025-11-25"): stale}), "2025-11-25", frozenset({"tools"}))
    rec.expect(f"{VERIFY_ID_PREFIX}0", key("tools/list", "2025-11-25"), drop=True, given=stale)
    send, extra = rec.outbound(f"{VERIFY_ID_PREFIX}0", TOOLS)
    assert not send and json.loads(extra) == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    assert rec.cache.answers[key("tools/list", "2025-11-25")] == TOOLS and rec.changed == [
        key("tools/list", "2025-11-25")
    ]
    quiet = Recorder(cache(tmp_path, {key("tools/list", "2025-11-25"): TOOLS}), "2025-11-25", frozenset({"tools"}))
    quiet.expect("v", key("tools/list", "2025-11-25"), drop=True, given=TOOLS)
    assert quiet.outbound("v", TOOLS) == (False, b"") and not quiet.changed


def test_each_list_announces_itself_only_where_the_client_was_told_it_may_change(tmp_path: Path) -> None:
    for told, expected in ((frozenset({"resources"}), "notifications/resources/list_changed"), (frozenset(), None)):
        rec = Recorder(cache(tmp_path), "2025-11-25", told)
        rec.expect("r", key("resources/templates/list", "2025-11-25"), drop=True, given={"resourceTemplates": []})
        _, extra = rec.outbound("r", {"resourceTemplates": [{"uriTemplate": "gateway://{x}", "name": "x"}]})
        assert (json.loads(extra)["method"] if extra else None) == expected


def test_a_stale_answer_given_to_a_2026_era_client_is_published_for_its_listen_streams(tmp_path: Path) -> None:
    rec = Recorder(cache(tmp_path), None, frozenset())
    rec.expect("m", key("prompts/list", "2026-07-28"), drop=True, given={"prompts": []}, modern=True)
    send, extra = rec.outbound("m", {"prompts": [{"name": "p"}]})
    assert (send, extra) == (False, b"") and rec.to_publish == ["prompts"]
    modern = {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
    rec.inbound(request(3, "tools/list", modern))
    assert rec.pending[3].modern and rec.pending[3].cache_key == key("tools/list", "2026-07-28")
