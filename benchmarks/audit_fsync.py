"""Audit cost per call (a start and a finish record) under each fsync mode, measured in one run.

    python -m benchmarks.audit_fsync [--dir DIR] [--calls 200] [--concurrency 32]

Sequential: one call at a time, the added latency a lone caller sees.
Concurrent: many callers at once, where group commit shares each fsync.
The log goes to DIR (default: a temp dir on the disk that holds the state dir).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from server.audit import AuditLog, AuditOptions, evidence

KEY = b"b" * 32
MODES = (("always", 0.0), ("group", 5.0), ("group", 1.0), ("group", 0.0), ("never", 0.0))


def _body(i: int) -> dict[str, object]:
    return {"call_id": f"{i:032x}", "principal": "bench", "tool": "embed", "request_sha256": evidence([i])}


async def _call(log: AuditLog, i: int) -> None:
    # as the pipeline does: the start record becomes durable with the finish record
    await log.write({"event": "start", **_body(i), "decision": "allow", "rule": "default"}, durable=False)
    await log.write({"event": "finish", **_body(i), "outcome": "ok", "latency_ms": 1.0})


async def sequential(path: Path, mode: str, ms: float, calls: int) -> list[float]:
    log = AuditLog(path, KEY, AuditOptions(fsync=mode, group_commit_ms=ms))  # type: ignore[arg-type]
    lat = []
    for i in range(calls):
        t = time.perf_counter()
        await _call(log, i)
        lat.append((time.perf_counter() - t) * 1e6)
    await log.aclose()
    return lat


async def concurrent(path: Path, mode: str, ms: float, calls: int, width: int) -> float:
    log = AuditLog(path, KEY, AuditOptions(fsync=mode, group_commit_ms=ms))  # type: ignore[arg-type]

    async def worker(w: int) -> None:
        for i in range(calls):
            await _call(log, w * calls + i)

    t = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(width):
            tg.start_soon(worker, w)
    elapsed = time.perf_counter() - t
    await log.aclose()
    return width * calls / elapsed


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        await _report(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _report(root: Path, args: argparse.Namespace) -> None:
    print(f"{'mode':<10} {'seq p50 us/call':>16} {'seq p99 us/call':>16} {'concurrent calls/s':>19} {'records/s':>10}")
    for mode, ms in MODES:
        name = f"{mode}-{ms:g}ms" if mode == "group" else mode
        lat = await sequential(root / f"seq-{name}" / "audit.jsonl", mode, ms, args.calls)
        rate = await concurrent(root / f"con-{name}" / "audit.jsonl", mode, ms, args.calls, args.concurrency)
        p99 = statistics.quantiles(lat, n=100)[98]
        print(f"{name:<10} {statistics.median(lat):>16.0f} {p99:>16.0f} {rate:>19.0f} {2 * rate:>10.0f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default=None)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32)
    anyio.run(main, p.parse_args())
