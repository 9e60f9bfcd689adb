"""Audit cost per call of this checkout against another (an older revision), interleaved in one run.

    git worktree add /tmp/base <rev>
    python -m benchmarks.audit_compare --baseline /tmp/base [--rounds 10] [--calls 400] [--modes group,never]

Each round runs one fresh process per side (baseline, this checkout; the order
alternates), which makes calls the way the pipeline does for a lone call: a
start record, then a finish record that makes both durable. Printed per fsync
mode: the median over rounds of each side's per-call p50, their ratio and
difference. A process of one side imports only that side's `server` package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import anyio
from server.audit import AuditLog, AuditOptions

async def main(path, mode, calls):
    log = AuditLog(path, b"b" * 32, AuditOptions(fsync=mode))
    def body(i):
        return {"call_id": f"{i:032x}", "principal": "bench", "tool": "embed", "request_sha256": "ab" * 32}
    lat = []
    for i in range(-50, calls):
        t = time.perf_counter()
        await log.write({"event": "start", **body(i), "decision": "allow"}, durable=False, alone=True)
        await log.write({"event": "finish", **body(i), "outcome": "ok"}, alone=True)
        if i >= 0:
            lat.append(time.perf_counter() - t)
    await log.aclose()
    print(json.dumps(statistics.median(lat) * 1e6))

from pathlib import Path
anyio.run(main, Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
"""


def one(root: Path, log: Path, mode: str, calls: int) -> float:
    argv = [sys.executable, "-c", WORKER, str(root), str(log), mode, str(calls)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main(args: argparse.Namespace) -> None:
    scratch = Path(tempfile.mkdtemp(dir=args.dir))
    sides = {"baseline": Path(args.baseline).resolve(), "this": ROOT}
    try:
        print(f"{args.rounds} rounds x {args.calls} calls per side, alternating; per-call p50, median over rounds")
        print(f"{'mode':<6} {'baseline us':>11} {'this us':>8} {'ratio':>6} {'diff us':>8}")
        for mode in args.modes.split(","):
            found: dict[str, list[float]] = {"baseline": [], "this": []}
            for rnd in range(args.rounds):
                order = ("baseline", "this") if rnd % 2 == 0 else ("this", "baseline")
                for side in order:
                    log = scratch / f"{mode}-{side}-{rnd}" / "audit.jsonl"
                    found[side].append(one(sides[side], log, mode, args.calls))
            base, this = statistics.median(found["baseline"]), statistics.median(found["this"])
            print(f"{mode:<6} {base:>11.1f} {this:>8.1f} {this / base:>6.3f} {this - base:>+8.1f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--baseline", required=True, help="another checkout of this repository (e.g. a git worktree)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--modes", default="group,never")
    p.add_argument("--dir", default=None, help="where the logs go (default: a temp dir)")
    main(p.parse_args())
