"""Audit cost per call when several gateway processes write one state dir, measured in one run.

    python -m benchmarks.audit_procs [--dir DIR] [--calls 400] [--procs 1,3] [--mode group] [--rounds 3]

Each process makes calls the way the pipeline does (a start record, then a
finish record that makes both durable, one call at a time) against either

- `shared`: one audit folder for every process (what several hosts on one HOME do), or
- `apart`: a folder per process (what one chain per process would cost: no coordination at all).

Printed per configuration: the per-call p50 and p99 each process saw (median
over processes and rounds), the calls/s of all processes together, and whether
`audit verify` accepts what the shared folder holds afterwards. Rounds run
interleaved (shared, apart / apart, shared), so a noisy machine moves both alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from server.audit import AuditLog, AuditOptions, evidence
from server.audit_verify import verify

KEY = b"b" * 32


def _body(worker: int, i: int) -> dict[str, object]:
    return {"call_id": f"{worker:08x}{i:024x}", "principal": "bench", "tool": "embed", "request_sha256": evidence([i])}


async def _calls(path: Path, mode: str, calls: int, worker: int) -> dict[str, float]:
    log = AuditLog(path, KEY, AuditOptions(fsync=mode))  # type: ignore[arg-type]
    for i in range(20):  # warm-up: first checkpoint, page cache, branch history
        await _one(log, worker, -1 - i)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    lat = []
    started = time.perf_counter()
    for i in range(calls):
        t = time.perf_counter()
        await _one(log, worker, i)
        lat.append((time.perf_counter() - t) * 1e6)
    elapsed = time.perf_counter() - started
    await log.aclose()
    return {"p50": statistics.median(lat), "p99": statistics.quantiles(lat, n=100)[98], "elapsed": elapsed}


async def _one(log: AuditLog, worker: int, i: int) -> None:
    await log.write({"event": "start", **_body(worker, i), "decision": "allow"}, durable=False, alone=True)
    await log.write({"event": "finish", **_body(worker, i), "outcome": "ok", "latency_ms": 1.0}, alone=True)


def _worker(args: argparse.Namespace) -> None:
    result = anyio.run(_calls, Path(args.worker), args.mode, args.calls, args.index)
    sys.stdout.write(json.dumps(result) + "\n")


def _run(folders: list[Path], mode: str, calls: int) -> tuple[list[dict[str, float]], float]:
    """Start one process per folder entry, release them together, collect what each measured."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.audit_procs",
                "--worker",
                str(folder / "audit.jsonl"),
                "--index",
                str(i),
                "--mode",
                mode,
                "--calls",
                str(calls),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, folder in enumerate(folders)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results, time.perf_counter() - started


def _measure(root: Path, layout: str, procs: int, args: argparse.Namespace, rnd: int) -> dict[str, object]:
    base = root / f"{layout}-{procs}-{rnd}"
    folders = [base] * procs if layout == "shared" else [base / f"p{i}" for i in range(procs)]
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
    results, wall = _run(folders, args.mode, args.calls)
    checked = [verify(f / "audit.jsonl", KEY) for f in dict.fromkeys(folders)]
    damage = next((str(r.damage) for r in checked if r.damage is not None), None)
    return {
        "p50": statistics.median(r["p50"] for r in results),
        "p99": statistics.median(r["p99"] for r in results),
        "rate": procs * args.calls / wall,
        "verify": "ok" if damage is None else f"DAMAGED ({damage[:60]})",
    }


def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        counts = [int(x) for x in args.procs.split(",")]
        print(f"fsync={args.mode}, {args.calls} calls per process, {args.rounds} rounds (median)")
        print(f"{'procs':>5} {'layout':<7} {'p50 us/call':>12} {'p99 us/call':>12} {'calls/s':>9}  verify")
        for procs in counts:
            found: dict[str, list[dict[str, object]]] = {"shared": [], "apart": []}
            for rnd in range(args.rounds):
                order = ("shared", "apart") if rnd % 2 == 0 else ("apart", "shared")
                for layout in order:
                    if procs == 1 and layout == "apart":
                        continue  # one process: both layouts are the same thing
                    found[layout].append(_measure(root, layout, procs, args, rnd))
            for layout, rows in found.items():
                if not rows:
                    continue
                p50 = statistics.median(float(str(r["p50"])) for r in rows)
                p99 = statistics.median(float(str(r["p99"])) for r in rows)
                rate = statistics.median(float(str(r["rate"])) for r in rows)
                bad = [str(r["verify"]) for r in rows if r["verify"] != "ok"]
                verdict = "ok" if not bad else f"{len(bad)}/{len(rows)} {bad[0]}"
                print(f"{procs:>5} {layout:<7} {p50:>12.0f} {p99:>12.0f} {rate:>9.0f}  {verdict}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default=None, help="where the logs go (default: a temp dir)")
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--procs", default="1,3")
    p.add_argument("--mode", default="group", choices=["always", "group", "never"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parsed = p.parse_args()
    if parsed.worker:
        _worker(parsed)
    else:
        main(parsed)
