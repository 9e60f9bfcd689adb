"""On HTTP the principal is the bearer token's subject: policy sees it and audit records it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.processes import http_gateway, ollama_manifests

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def tokens_file(path: Path, tokens: dict[str, str]) -> Path:
    entries = [{"sha256": hashlib.sha256(t.encode()).hexdigest(), "subject": s} for t, s in tokens.items()]
    path.write_text(json.dumps({"tokens": entries}))
    return path


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
