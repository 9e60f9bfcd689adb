"""A real gateway under concurrent load, killed with SIGKILL at random moments, again and again.

After every kill: each call a client saw answered has its finish record, and
the whole chain (across every run so far) verifies. At the end a torn last
line is planted, reported by `model-gateway audit verify` and cut by `--repair`.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from server.audit import evidence
from server.audit_verify import verify
from tests.support.processes import ROOT, free_port, gateway_argv, gateway_env, ollama_manifests, wait_http

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
KILLS = 20
CLIENTS = 4
KEY = bytes.fromhex("11" * 32)  # what gateway_env passes as MODEL_GATEWAY_AUDIT_KEY


async def _load(base: str, run: int, worker: int, answered: list[str], stop: anyio.Event) -> None:
    """Call embed with unique texts until the server dies; remember every text whose answer arrived."""
    try:
        async with Client(base + "/mcp") as client:
            n = 0
            while not stop.is_set():
                text = f"run {run} worker {worker} call {n}"
                result = await client.call_tool("embed", {"input": [text]})
                if not result.is_error:
                    answered.append(text)
                n += 1
    except Exception:  # the server was killed mid-call: that call was never answered
        return


async def _run_and_kill(home: Path, manifests: Path, run: int, rng: random.Random) -> list[str]:
    port = free_port()
    argv = gateway_argv("--transport", "streamable-http", "--port", str(port), "--manifests", str(manifests))
    answered: list[str] = []
    with (home / f"gateway-{run}.log").open("wb") as stderr:
        proc = await anyio.open_process(argv, env=gateway_env(home), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            base = f"http://127.0.0.1:{port}"
            await anyio.to_thread.run_sync(lambda: wait_http(base + "/health"))
            stop = anyio.Event()
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for w in range(CLIENTS):
                        tg.start_soon(_load, base, run, w, answered, stop)
                    await anyio.sleep(rng.uniform(0.05, 0.6))
                    proc.send_signal(signal.SIGKILL)
                    stop.set()
        finally:
            if proc.returncode is None:
                proc.kill()
            with anyio.fail_after(10):
                await proc.wait()
    return answered


def _finished_requests(log: Path) -> set[str]:
    """request_sha256 of every call whose finish record says ok."""
    lines = [json.loads(x) for p in sorted(log.parent.glob("audit.jsonl*")) for x in p.read_text().splitlines()]
    starts = {r["call_id"]: r["request_sha256"] for r in lines if r.get("event") == "start"}
    return {starts[r["call_id"]] for r in lines if r.get("event") == "finish" and r.get("outcome") == "ok"}


def _cli_verify(log: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "server", "audit", "verify", str(log), *extra]
    env = gateway_env(log.parent)
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


async def test_sigkill_under_load_loses_no_answered_call_and_the_chain_verifies(
    tmp_path: Path, ollama_url: str
) -> None:
    manifests = ollama_manifests(tmp_path / "manifests", ollama_url)
    log = tmp_path / ".local" / "state" / "model-gateway" / "audit" / "audit.jsonl"
    rng = random.Random(20)
    total = 0
    for run in range(KILLS):
        answered = await _run_and_kill(tmp_path, manifests, run, rng)
        total += len(answered)
        finished = _finished_requests(log)
        missing = [t for t in answered if evidence({"input": [t], "model": None, "dimensions": None}) not in finished]
        assert not missing, f"run {run}: answered calls without a finish record: {missing[:3]}"
        report = verify(log, KEY)
        assert report.ok, f"run {run}: {report.damage}"
    assert total > KILLS  # the load was real: calls were answered between kills

    with log.open("ab") as fh:
        fh.write(b'{"seq":999999,"event":"fin')  # a record torn by a crash mid-write
    torn = _cli_verify(log)
    assert torn.returncode == 1 and "torn" in torn.stdout
    repaired = _cli_verify(log, "--repair")
    assert repaired.returncode == 0 and "cut a torn last line" in repaired.stdout, repaired.stdout + repaired.stderr
    assert _cli_verify(log).returncode == 0
