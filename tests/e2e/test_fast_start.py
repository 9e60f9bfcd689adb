"""stdio fast start with the real server process and real clients (legacy initialize and 2026 discover)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from server.stdio_front import CACHE_FILE, HandshakeCache, fingerprint, options
from tests.support.processes import ROOT, gateway_argv, gateway_env, stdio_params

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def cache_path(home: Path) -> Path:
    return home / ".cache" / "model-gateway" / CACHE_FILE


async def session(home: Path, manifests: Path, mode: str, *extra: str) -> tuple[list[dict[str, Any]], bool]:
    """One client session: what it was told (tools, resources, prompts), and whether a call then worked."""
    with anyio.fail_after(60):
        async with Client(stdio_params(home, manifests, *extra), mode=mode) as client:  # type: ignore[arg-type]
            tools = (await client.list_tools()).tools
            resources = (await client.list_resources()).resources
            prompts = (await client.list_prompts()).prompts
            result = await client.call_tool("embed", {"input": "hello"})
    told = [x.model_dump(mode="json") for x in [*tools, *resources, *prompts]]
    return told, not result.is_error


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_second_start_answers_the_handshake_as_the_first_did(
    tmp_path: Path, manifests: Path, mode: str
) -> None:
    first, ok1 = await session(tmp_path, manifests, mode)
    recorded = json.loads(cache_path(tmp_path).read_text())["answers"]
    assert any(k.startswith("tools/list|") for k in recorded)
    second, ok2 = await session(tmp_path, manifests, mode)
    plain, ok3 = await session(tmp_path, manifests, mode, "--no-fast-start")
    assert ok1 and ok2 and ok3
    assert first == second == plain
    assert {t["name"] for t in first} >= {"chat", "embed", "rerank", "models"}
    assert any(k.startswith("resources/list|") for k in recorded)


async def test_a_stale_cached_answer_is_served_once_then_replaced(tmp_path: Path, manifests: Path) -> None:
    """A planted answer with a tool the server does not have: the front serves it, the handover corrects it."""
    await session(tmp_path, manifests, "legacy")  # records the real answers
    path = cache_path(tmp_path)
    fp = fingerprint(options(manifests, None, None), gateway_env(tmp_path))
    planted = HandshakeCache.load(path, fp)
    assert planted.answers, "the planted cache must carry the server's own fingerprint"
    tools_key = next(k for k in planted.answers if k.startswith("tools/list|"))
    real = planted.answers[tools_key]
    extra = {"name": "planted", "inputSchema": {"type": "object"}}
    planted.answers[tools_key] = {**real, "tools": [*real["tools"], extra]}
    planted.save()
    with anyio.fail_after(60):
        async with Client(stdio_params(tmp_path, manifests), mode="legacy") as client:
            early = {t.name for t in (await client.list_tools()).tools}
            assert not (await client.call_tool("embed", {"input": "x"})).is_error  # served after the handover
            later = {t.name for t in (await client.list_tools()).tools}
    assert "planted" in early  # answered by the front, from the file
    assert "planted" not in later and later == early - {"planted"}
    deadline = time.monotonic() + 10
    while "planted" in json.dumps(HandshakeCache.load(path, fp).answers[tools_key]):
        assert time.monotonic() < deadline, "the stale answer was not replaced"
        await anyio.sleep(0.05)


def _initialize() -> bytes:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}).encode() + b"\n"


def test_queued_requests_and_a_client_leaving_early(tmp_path: Path, manifests: Path) -> None:
    anyio.run(session, tmp_path, manifests, "legacy")
    argv = gateway_argv("--manifests", str(manifests))
    env = gateway_env(tmp_path)
    # everything at once, before the server can be ready: answers come back for every request
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "models", "arguments": {}}}
    stream = _initialize() + b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
    stream += b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n' + json.dumps(call).encode() + b"\n"
    done = subprocess.run(argv, input=stream, env=env, cwd=ROOT, capture_output=True, timeout=60)
    answers = {m["id"]: m for m in map(json.loads, done.stdout.splitlines())}
    assert done.returncode == 0 and set(answers) == {1, 2, 3}
    assert answers[1]["result"]["serverInfo"]["name"] == "model-gateway" and answers[2]["result"] == {}
    assert answers[3]["result"]["structuredContent"]["models"]
    # a client that leaves right after its answer: the process ends at once, quietly
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(_initialize())
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["id"] == 1
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
