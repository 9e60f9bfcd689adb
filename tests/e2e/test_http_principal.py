"""On HTTP the principal is the bearer token's subject: policy sees it and audit records it."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.mcp_http import (
    INITIALIZED,
    headers,
    initialize_message,
    open_session,
    post,
    sse_session,
    tokens_file,
    tool_call,
    with_front_door,
)
from tests.support.processes import http_gateway, ollama_manifests

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def embed_as(base: str, token: str | None) -> tuple[int | None, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        if token is None:
            return (await http.post(base + "/mcp", json={})).status_code, ""
        async with Client(streamable_http_client(base + "/mcp", http_client=http)) as client:
            r = await client.call_tool("embed", {"input": ["hello"]})
            return None, r.content[0].text if r.is_error else "ok"


async def test_each_token_subject_is_the_principal_for_policy_and_audit(tmp_path: Path, ollama_url: str) -> None:
    manifests = ollama_manifests(tmp_path / "manifests", ollama_url)
    (manifests / "policy.json").write_text(
        json.dumps(
            {
                "rules": [
                    {"id": "no-eve", "effect": "deny", "match": {"principal": ["eve"]}, "reason": "eve is suspended"}
                ],
            }
        )
    )
    env = {
        "MODEL_GATEWAY_AUTH_TOKENS_FILE": str(
            tokens_file(tmp_path / "tokens.json", {"tok-alice-123": "alice", "tok-eve-4567": "eve"})
        )
    }
    home = tmp_path / "home"
    with http_gateway(home, manifests, "streamable-http", env=env) as base, anyio.fail_after(60):
        alice = await embed_as(base, "tok-alice-123")
        eve = await embed_as(base, "tok-eve-4567")
        anonymous = await embed_as(base, None)
    assert alice == (None, "ok")
    assert "no-eve" in eve[1] and "eve is suspended" in eve[1]
    assert anonymous[0] == 401
    audit = home / ".local" / "state" / "model-gateway" / "audit" / "audit.jsonl"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    by_event = {(r["event"], r.get("principal")) for r in records if r["event"] in ("start", "finish", "deny")}
    assert {("start", "alice"), ("finish", "alice"), ("deny", "eve")} <= by_event
    assert not any("tok-alice" in line or "tok-eve" in line for line in audit.read_text().splitlines())


ALICE, BOB = "tok-alice-123", "tok-bob-4567"


def two_principals(tmp_path: Path) -> dict[str, str]:
    path = tokens_file(tmp_path / "tokens.json", {ALICE: "alice", BOB: "bob"})
    return {"MODEL_GATEWAY_AUTH_TOKENS_FILE": str(path), "MODEL_GATEWAY_LOG_LEVEL": "INFO"}


async def test_a_streamable_http_session_answers_only_to_the_principal_that_opened_it(
    tmp_path: Path, ollama_url: str
) -> None:
    manifests = ollama_manifests(tmp_path / "manifests", ollama_url)
    log = tmp_path / "stderr.log"
    with (
        http_gateway(tmp_path / "home", manifests, "streamable-http", env=two_principals(tmp_path), log=log) as base,
        anyio.fail_after(60),
    ):
        url = base + "/mcp"
        async with httpx2.AsyncClient(timeout=10) as http:
            sid = await open_session(http, url, ALICE)
            by_bob = [
                await post(http, url, tool_call("embed", {"input": ["from bob"]}), BOB, sid),
                await post(http, url, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, BOB, sid),
                await http.get(url, headers=headers(BOB, sid)),
                await http.delete(url, headers=headers(BOB, sid)),
                await post(http, url, tool_call("embed", {"input": ["x"]}), BOB, sid.upper()),
            ]
            by_alice = await post(http, url, tool_call("embed", {"input": ["from alice"]}), ALICE, sid)
            unknown = await post(http, url, tool_call("embed", {"input": ["x"]}), ALICE, "0" * 32)
    assert [r.status_code for r in by_bob] == [404] * 5
    assert all(r.json()["error"]["message"] == "Session not found" for r in by_bob)
    assert unknown.status_code == 404 and unknown.json() == by_bob[0].json()  # foreign and unknown look alike
    assert by_alice.status_code == 200 and by_alice.json()["result"]["structuredContent"]["count"] == 1
    audit = (tmp_path / "home" / ".local" / "state" / "model-gateway" / "audit" / "audit.jsonl").read_text()
    assert "bob" not in {json.loads(line).get("principal") for line in audit.splitlines()}
    assert sid not in log.read_text()  # session ids are logged only at DEBUG


async def test_a_legacy_sse_session_takes_messages_only_from_its_principal(tmp_path: Path, ollama_url: str) -> None:
    manifests = ollama_manifests(tmp_path / "manifests", ollama_url)
    with (
        http_gateway(tmp_path / "home", manifests, "sse", env=two_principals(tmp_path)) as base,
        anyio.fail_after(60),
    ):
        async with httpx2.AsyncClient(timeout=10) as http, sse_session(http, base, ALICE) as alice:
            assert (await post(http, alice.endpoint, initialize_message(1), ALICE)).status_code == 202
            await alice.wait_for(1)
            assert (await post(http, alice.endpoint, INITIALIZED, ALICE)).status_code == 202
            hyphenated = str(UUID(hex=alice.session_id))
            bobs_call = tool_call("embed", {"input": ["b"]}, 7)
            injected = [
                await post(http, f"{base}/messages/?session_id={spelling}", bobs_call, BOB)
                for spelling in (alice.session_id, alice.session_id.upper(), hyphenated, "{" + hyphenated + "}")
            ]
            own = await post(http, alice.endpoint, tool_call("embed", {"input": ["a"]}, 8), ALICE)
            answer = await alice.wait_for(8)
    assert [r.status_code for r in injected] == [404] * 4
    assert own.status_code == 202 and answer["result"]["structuredContent"]["count"] == 1
    assert not [m for m in alice.messages if m.get("id") == 7]  # nothing bob sent reached alice's stream


async def test_at_its_session_cap_a_principal_loses_its_oldest_idle_session_and_no_one_else_is_affected(
    tmp_path: Path, ollama_url: str
) -> None:
    manifests = with_front_door(ollama_manifests(tmp_path / "manifests", ollama_url), max_sessions_per_principal=3)
    with (
        http_gateway(tmp_path / "home", manifests, "streamable-http", env=two_principals(tmp_path)) as base,
        anyio.fail_after(60),
    ):
        url = base + "/mcp"
        listing = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
        async with httpx2.AsyncClient(timeout=10) as http:
            bobs = [await open_session(http, url, BOB) for _ in range(2)]
            alices = [await open_session(http, url, ALICE) for _ in range(5)]
            alive = [(await post(http, url, listing, ALICE, sid)).status_code for sid in alices]
            bob_alive = [(await post(http, url, listing, BOB, sid)).status_code for sid in bobs]
    assert alive == [404, 404, 200, 200, 200]
    assert bob_alive == [200, 200]


async def test_a_session_left_idle_past_the_timeout_is_closed(tmp_path: Path, ollama_url: str) -> None:
    manifests = with_front_door(ollama_manifests(tmp_path / "manifests", ollama_url), session_idle_timeout_s=1.0)
    with http_gateway(tmp_path / "home", manifests, "streamable-http") as base, anyio.fail_after(60):
        url = base + "/mcp"
        listing = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
        async with httpx2.AsyncClient(timeout=10) as http:
            sid = await open_session(http, url)
            assert (await post(http, url, listing, sid=sid)).status_code == 200
            await anyio.sleep(3)  # the idle timeout has to pass untouched: any request would restart it
            after = await post(http, url, listing, sid=sid)
    assert after.status_code == 404


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_health_and_metrics_answer_only_the_hosts_and_origins_the_mcp_endpoint_accepts(
    tmp_path: Path, ollama_url: str, transport: str
) -> None:
    manifests = ollama_manifests(tmp_path / "manifests", ollama_url)
    with http_gateway(tmp_path / "home", manifests, transport) as base, anyio.fail_after(60):
        async with httpx2.AsyncClient(timeout=10) as http:
            codes = {}
            for path in ("/health", "/metrics", "/mcp" if transport == "streamable-http" else "/sse"):
                rebound = await http.get(base + path, headers={"host": "attacker.example:8765"})
                foreign = await http.get(base + path, headers={"origin": "http://attacker.example"})
                codes[path] = (rebound.status_code, foreign.status_code)
            ok = [(await http.get(base + p)).status_code for p in ("/health", "/metrics")]
    assert set(codes.values()) == {(421, 403)}, codes
    assert ok == [200, 200]


async def test_at_its_cap_a_principal_s_oldest_legacy_sse_stream_is_closed_to_make_room(
    tmp_path: Path, ollama_url: str
) -> None:
    manifests = with_front_door(ollama_manifests(tmp_path / "manifests", ollama_url), max_sessions_per_principal=2)
    with (
        http_gateway(tmp_path / "home", manifests, "sse", env=two_principals(tmp_path)) as base,
        anyio.fail_after(60),
    ):
        timeout = httpx2.Timeout(10, read=None)
        async with (
            httpx2.AsyncClient(timeout=timeout) as http,
            sse_session(http, base, ALICE) as first,
            sse_session(http, base, ALICE) as second,
            sse_session(http, base, BOB) as bobs,
            sse_session(http, base, ALICE) as third,
        ):
            await first.ended.wait()
            alive = [s.ended.is_set() for s in (second, third, bobs)]
            gone = await post(http, first.endpoint, initialize_message(), ALICE)
            kept = await post(http, third.endpoint, initialize_message(), ALICE)
    assert alive == [False, False, False]
    assert gone.status_code == 404 and kept.status_code == 202
