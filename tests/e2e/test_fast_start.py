"""stdio fast start with the real server process and real clients (legacy initialize and 2026 discover)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from server.stdio.handshake import CACHE_FILE, KEY_FILE, HandshakeCache, fingerprint, options
from tests.support.processes import ROOT, gateway_argv, gateway_env, stdio_params

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def cache_dir(home: Path) -> Path:
    return home / ".cache" / "model-gateway"


def recorded(home: Path, manifests: Path) -> HandshakeCache:
    """The cache as the server reads it: signed by this user's key, for this code and these options."""
    return HandshakeCache.load(cache_dir(home), fingerprint(options(manifests, None, None), gateway_env(home)))


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
    answers = recorded(tmp_path, manifests).answers
    assert any(k.startswith("tools/list|") for k in answers)
    second, ok2 = await session(tmp_path, manifests, mode)
    plain, ok3 = await session(tmp_path, manifests, mode, "--no-fast-start")
    assert ok1 and ok2 and ok3
    assert first == second == plain
    assert {t["name"] for t in first} >= {"chat", "embed", "rerank", "models"}
    assert any(k.startswith("resources/list|") for k in answers)


async def test_a_stale_signed_answer_is_served_once_then_corrected_in_the_same_session(
    tmp_path: Path, manifests: Path
) -> None:
    """An answer this server signed but no longer gives: the front serves it, the client is told to ask again."""
    await session(tmp_path, manifests, "legacy")  # records the real answers
    planted = recorded(tmp_path, manifests)
    tools_key = next(k for k in planted.answers if k.startswith("tools/list|"))
    real = planted.answers[tools_key]
    planted.answers[tools_key] = {
        **real,
        "tools": [*real["tools"], {"name": "planted", "inputSchema": {"type": "object"}}],
    }
    planted.save()
    notes: list[str] = []

    async def on_message(message: object) -> None:
        notes.append(str(getattr(getattr(message, "root", message), "method", "")))

    with anyio.fail_after(60):
        params = stdio_params(tmp_path, manifests)
        async with Client(params, mode="legacy", message_handler=on_message) as client:
            early = {t.name for t in (await client.list_tools()).tools}
            assert not (await client.call_tool("embed", {"input": "x"})).is_error  # served after the handover
            later = {t.name for t in (await client.list_tools()).tools}
    assert "planted" in early and "planted" not in later and later == early - {"planted"}
    assert "notifications/tools/list_changed" in notes
    assert "planted" not in json.dumps(recorded(tmp_path, manifests).answers[tools_key])


def tamper_digit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b'"protocolVersion":"') + len(b'"protocolVersion":"') + 3
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    path.write_bytes(bytes(data))


def inject_tool(path: Path) -> None:
    path.write_bytes(
        path.read_bytes().replace(b'"tools":[', b'"tools":[{"name":"injected","inputSchema":{"type":"object"}},', 1)
    )


def open_to_others(path: Path) -> None:
    os.chmod(path, 0o666)


def foreign_owner(path: Path) -> None:
    os.chown(path, 4242, 4242)


TAMPERING = {"digit": tamper_digit, "tool": inject_tool, "mode": open_to_others, "owner": foreign_owner}


@pytest.mark.parametrize("how", sorted(TAMPERING))
async def test_a_cache_file_this_server_did_not_write_is_never_served_and_is_rewritten(
    tmp_path: Path, manifests: Path, how: str
) -> None:
    if how == "owner" and os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    real, _ = await session(tmp_path, manifests, "legacy")
    path = cache_dir(tmp_path) / CACHE_FILE
    TAMPERING[how](path)
    for _ in range(2):  # every start works, and the first already rewrote the file
        told, ok = await session(tmp_path, manifests, "legacy")
        assert ok and told == real
    st = path.stat()
    assert st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0
    assert recorded(tmp_path, manifests).answers, "the file was not rewritten with the server's own answers"


async def test_a_key_others_can_read_is_replaced_and_the_state_folder_is_private(
    tmp_path: Path, manifests: Path
) -> None:
    await session(tmp_path, manifests, "legacy")
    key = cache_dir(tmp_path) / KEY_FILE
    before = key.read_bytes()
    os.chmod(key, 0o644)
    told, ok = await session(tmp_path, manifests, "legacy")
    assert ok and told
    assert key.read_bytes() != before and key.stat().st_mode & 0o777 == 0o600
    assert cache_dir(tmp_path).stat().st_mode & 0o777 == 0o700
    assert recorded(tmp_path, manifests).answers  # re-signed under the new key


def _initialize(request_id: int = 1) -> bytes:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}).encode() + b"\n"


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


def test_sigterm_before_the_server_is_ready_refuses_what_waits_and_exits_0(tmp_path: Path, manifests: Path) -> None:
    anyio.run(session, tmp_path, manifests, "legacy")  # a warm cache: the front answers initialize
    proc = subprocess.Popen(
        gateway_argv("--manifests", str(manifests)),
        env=gateway_env(tmp_path),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "models", "arguments": {}}}
    proc.stdin.write(_initialize() + json.dumps(call).encode() + b"\n")
    proc.stdin.flush()
    first = json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 0
    answers = [first, *map(json.loads, rest.splitlines())]
    assert {a["id"] for a in answers} == {1, 2}  # the call: answered, or refused as the server stops
    second = next(a for a in answers if a["id"] == 2)
    assert "result" in second or second["error"]["code"] == -32000
