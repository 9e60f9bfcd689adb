"""Stopping a stdio server with calls in flight: SIGTERM/SIGINT let them finish, then the process exits 0.

A real SDK client spawns the real server (through `tests.support.pidwrap`, so the test can
signal it and read its exit code); the calls wait on a slow fake Ollama when the signal lands.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.support.fake_ollama import Fault, remote_inject, spawn
from tests.support.gateway import write_manifests
from tests.support.processes import ROOT, gateway_argv, gateway_env, ollama_manifests

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CALLS = 20


def audit_records(home: Path) -> list[dict[str, object]]:
    path = home / ".local" / "state" / "model-gateway" / "audit" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wrapped(home: Path, manifests: Path, record: Path, *extra: str) -> StdioServerParameters:
    argv = [
        sys.executable,
        "-m",
        "tests.support.pidwrap",
        str(record),
        "--",
        *gateway_argv("--manifests", str(manifests), *extra),
    ]
    return StdioServerParameters(command=argv[0], args=argv[1:], env=gateway_env(home), cwd=str(ROOT))


def poll(check: Callable[[], bool], deadline_s: float = 30.0) -> None:
    """Files written by another process have no event to wait on: look until `check()` or the deadline."""
    end = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > end:
            raise TimeoutError("the condition did not hold in time")
        time.sleep(0.05)


async def wait_for(check: Callable[[], bool]) -> None:
    await anyio.to_thread.run_sync(poll, check)


async def calls_then_signal(home: Path, manifests: Path, sig: signal.Signals, *extra: str) -> list[object]:
    """CALLS embed calls in flight, then `sig` to the server; every call's outcome, and the exit code file."""
    record = home / "server.pid"
    outcomes: list[object] = []

    async def call(client: Client, n: int) -> None:
        try:
            result = await client.call_tool("embed", {"input": f"text {n}"})
            outcomes.append(result)
        except Exception as exc:  # the connection closing under a call is an outcome too
            outcomes.append(exc)

    with anyio.fail_after(90):
        async with (
            Client(wrapped(home, manifests, record, *extra), mode="legacy") as client,
            anyio.create_task_group() as tg,
        ):
            for n in range(CALLS):
                tg.start_soon(call, client, n)
            await wait_for(lambda: sum(r.get("event") == "start" for r in audit_records(home)) == CALLS)
            os.kill(int(record.read_text()), sig)
        await wait_for(lambda: record.with_suffix(".rc").exists())
    return outcomes


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_lets_calls_in_flight_finish_with_their_audit_records_then_exits_0(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with spawn() as url:
        await anyio.to_thread.run_sync(remote_inject, url, Fault("slow", path="/api/embed", delay_s=1.5))
        manifests = ollama_manifests(tmp_path / "manifests", url)
        outcomes = await calls_then_signal(tmp_path, manifests, sig)
    assert len(outcomes) == CALLS
    assert all(not isinstance(o, Exception) and not o.is_error for o in outcomes), outcomes  # type: ignore[union-attr]
    assert (tmp_path / "server.rc").read_text() == "0"
    records = audit_records(tmp_path)
    starts = {r["call_id"] for r in records if r.get("event") == "start"}
    finishes = {r["call_id"]: r for r in records if r.get("event") == "finish"}
    assert len(starts) == CALLS and starts == set(finishes)


async def test_calls_still_running_after_the_grace_period_are_cancelled_answered_and_audited(tmp_path: Path) -> None:
    with spawn() as url:
        await anyio.to_thread.run_sync(remote_inject, url, Fault("slow", path="/api/embed", delay_s=20))
        manifests = ollama_manifests(tmp_path / "manifests", url)
        outcomes = await calls_then_signal(tmp_path, manifests, signal.SIGTERM, "--shutdown-grace", "0.5")
    assert len(outcomes) == CALLS  # each one answered (with an error) or ended by the closed connection
    assert (tmp_path / "server.rc").read_text() == "0"
    records = audit_records(tmp_path)
    starts = {r["call_id"] for r in records if r.get("event") == "start"}
    finishes = {r["call_id"]: r for r in records if r.get("event") == "finish"}
    assert starts == set(finishes) and len(starts) == CALLS


def test_ctrl_c_in_a_terminal_ends_the_server_with_0(tmp_path: Path) -> None:
    """A terminal on stdin is waited on like a pipe: no reader thread is left to keep the process alive."""
    main, terminal = pty.openpty()
    proc = subprocess.Popen(
        gateway_argv("--no-fast-start", "--manifests", str(write_manifests(tmp_path / "manifests"))),
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=gateway_env(tmp_path),
        cwd=ROOT,
    )
    os.close(terminal)
    try:
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "tty", "version": "0"}}
        os.write(
            main, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}).encode() + b"\n"
        )
        assert proc.stdout is not None and json.loads(proc.stdout.readline())["id"] == 1  # served, reading the terminal
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
