"""Several stdio gateways on one HOME, driven by real MCP clients, killed with SIGKILL at random instants.

Used by tests/e2e/test_many_processes.py (small, seeded, bounded) and by
`python -m benchmarks.many_processes` (longer, with printed figures). Each
slot is one host application: it starts `model-gateway serve` over stdio,
makes embed calls with texts no other call uses, and (in a kill campaign) is
killed at a random instant after its first answer, then started again. The
audit log is written with `capture_content`, so each answered text can be
found in its call's start record, and the finish record is looked up by call id.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from mcp import Client

from server.audit_chain import segment_files
from tests.support.processes import ROOT, gateway_env, ollama_manifests, stdio_params

MARKER = "MODEL_GATEWAY_TEST_SLOT"
CALL_DEADLINE_S = 30.0


@dataclass
class Figures:
    starts: int = 0
    failed_starts: list[str] = field(default_factory=list)
    kills: int = 0
    answered: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def campaign_manifests(root: Path, ollama_url: str) -> Path:
    """Ollama manifests whose audit keeps content (to find each text) and rotates and checkpoints often."""
    manifests = ollama_manifests(root, ollama_url)
    perf = json.loads((ROOT / "manifests" / "performance-config.json").read_text())
    perf["audit"] |= {"capture_content": True, "max_file_bytes": 16384, "checkpoint_every": 7}
    (manifests / "performance-config.json").write_text(json.dumps(perf))
    return manifests


def find_pid(marker: str) -> int | None:
    """The process whose environment carries `MARKER=marker` (the stdio server a client spawned)."""
    needle = f"{MARKER}={marker}".encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes():
                    return int(entry.name)
    return None


async def _caller(client: Client, label: str, figures: Figures, stop: anyio.Event) -> None:
    n = 0
    while not stop.is_set():
        text = f"{label} call {n}"
        n += 1
        with anyio.fail_after(CALL_DEADLINE_S):
            result = await client.call_tool("embed", {"input": [text]})
        if result.is_error:
            figures.errors.append(f"{text}: {result.content[0]}")
        else:
            figures.answered.append(text)


async def _killer(marker: str, after_s: float, figures: Figures, stop: anyio.Event) -> None:
    await anyio.sleep(after_s)
    pid = find_pid(marker)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        figures.kills += 1
    stop.set()


@dataclass(frozen=True, slots=True)
class Drive:
    """How one start of a slot is driven: killed `kill_after_s` after its first answer, or (None) never
    killed and `calls` calls made by each of `callers` clients."""

    kill_after_s: float | None = None
    calls: int = 6
    callers: int = 2


async def run_once(home: Path, manifests: Path, label: str, figures: Figures, drive: Drive) -> None:
    """One start of one slot: the first call must be answered; then calls until killed (or `calls` each)."""
    figures.starts += 1
    params = stdio_params(home, manifests, env={MARKER: label, "MODEL_GATEWAY_LOG_LEVEL": "WARNING"})
    stop = anyio.Event()
    try:
        with anyio.fail_after(60):
            async with Client(params) as client:
                first = await client.call_tool("embed", {"input": [f"{label} first"]})
                if first.is_error:
                    figures.failed_starts.append(f"{label}: {first.content[0]}")
                    return
                figures.answered.append(f"{label} first")
                await _drive(client, label, figures, stop, drive)
    except Exception as exc:  # the server was killed mid-call: unanswered calls are expected
        if drive.kill_after_s is None or not stop.is_set():
            figures.failed_starts.append(f"{label}: {type(exc).__name__}: {exc}"[:300])


async def _drive(client: Client, label: str, figures: Figures, stop: anyio.Event, drive: Drive) -> None:
    if drive.kill_after_s is not None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_killer, label, drive.kill_after_s, figures, stop)
            for w in range(drive.callers):
                tg.start_soon(_caller, client, f"{label} w{w}", figures, stop)
        return
    async with anyio.create_task_group() as tg:
        for w in range(drive.callers):
            tg.start_soon(_fixed_calls, client, f"{label} w{w}", figures, drive.calls)


async def _fixed_calls(client: Client, label: str, figures: Figures, calls: int) -> None:
    for n in range(calls):
        text = f"{label} call {n}"
        with anyio.fail_after(CALL_DEADLINE_S):
            result = await client.call_tool("embed", {"input": [text]})
        (figures.errors if result.is_error else figures.answered).append(text)


async def kill_campaign(home: Path, manifests: Path, slots: int, kills: int, seed: int, deadline_s: float) -> Figures:
    """`slots` gateways at once, each killed at a random instant and started again, until `kills` kills."""
    figures = Figures()
    rng = random.Random(seed)
    stop_at = time.monotonic() + deadline_s

    async def slot(i: int) -> None:
        gen = 0
        while figures.kills < kills and time.monotonic() < stop_at:
            gen += 1
            await run_once(home, manifests, f"s{i} g{gen}", figures, Drive(kill_after_s=rng.uniform(0.02, 0.6)))

    async with anyio.create_task_group() as tg:
        for i in range(slots):
            tg.start_soon(slot, i)
    return figures


def unrecorded(log: Path, answered: list[str]) -> list[str]:
    """Answered texts whose call has no `ok` finish record in the trail."""
    starts: dict[str, str] = {}
    finished: set[str] = set()
    for _, p in segment_files(log):
        if not p.exists():
            continue
        for line in p.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("event") == "start" and "request" in rec:
                    starts[rec["call_id"]] = json.dumps(rec["request"])
                elif rec.get("event") == "finish" and rec.get("outcome") == "ok":
                    finished.add(rec["call_id"])
    recorded = {text for cid, req in starts.items() if cid in finished for text in _texts(req)}
    return [t for t in answered if t not in recorded]


def _texts(request_json: str) -> list[str]:
    req = json.loads(request_json)
    texts = req.get("input", []) if isinstance(req, dict) else []
    return [texts] if isinstance(texts, str) else [t for t in texts if isinstance(t, str)]


def cli_verify(home: Path, *extra: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`model-gateway audit verify` over the state dir, as a user would run it."""
    state = home / ".local" / "state" / "model-gateway"
    argv = [sys.executable, "-m", "server", "audit", "verify", str(state), *extra]
    return subprocess.run(argv, env=gateway_env(home, env), cwd=ROOT, capture_output=True, text=True, timeout=120)
