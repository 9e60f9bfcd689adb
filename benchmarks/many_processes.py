"""Many gateways on one HOME, killed at random: what is lost, what fails to restart, whether the trail verifies.

    python -m benchmarks.many_processes [--slots 4] [--kills 100] [--tries 3] [--seed 1] [--deadline 600]

Each try starts `--slots` stdio gateways (real MCP clients, one HOME, one fake
Ollama), makes calls, SIGKILLs a random one at a random instant after its first
answer and starts it again, until `--kills` kills; then `audit verify` runs on
the state dir (with `--repair` only when a torn last line is all it reports).
Printed per try and in total: starts, kills, calls answered, answered calls
without a finish record, failed restarts, verify outcome, wall time.
The tests run a small seeded version of this (tests/e2e/test_many_processes.py).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import anyio

from tests.support.fake_ollama import spawn
from tests.support.many import campaign_manifests, cli_verify, kill_campaign, unrecorded


async def one_try(root: Path, url: str, args: argparse.Namespace, n: int) -> dict[str, object]:
    home = root / f"try-{n}"
    manifests = campaign_manifests(home / "manifests", url)
    started = time.perf_counter()
    figures = await kill_campaign(home, manifests, args.slots, args.kills, args.seed + n, args.deadline)
    wall = time.perf_counter() - started
    log = home / ".local" / "state" / "model-gateway" / "audit" / "audit.jsonl"
    lost = unrecorded(log, figures.answered)
    checked = cli_verify(home)
    verdict = "ok"
    if checked.returncode != 0:
        verdict = "torn, repaired" if "torn" in checked.stdout else checked.stdout.strip()[:120]
        if "torn" in checked.stdout and cli_verify(home, "--repair").returncode != 0:
            verdict = "DAMAGED after repair: " + checked.stdout.strip()[:100]
    return {
        "starts": figures.starts,
        "kills": figures.kills,
        "answered": len(figures.answered),
        "lost": len(lost),
        "failed_restarts": len(figures.failed_starts),
        "errors": len(figures.errors),
        "verify": verdict,
        "wall_s": wall,
        "first_failure": (figures.failed_starts or figures.errors or [""])[0][:160],
    }


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="many-processes-"))
    totals = {"starts": 0, "kills": 0, "answered": 0, "lost": 0, "failed_restarts": 0, "errors": 0}
    print(f"{args.slots} gateways on one HOME, {args.kills} SIGKILLs per try, {args.tries} tries, seed {args.seed}")
    head = f"{'try':>3} {'starts':>6} {'kills':>5} {'answered':>8} {'lost':>4} {'failed restarts':>15} {'errors':>6}"
    print(f"{head} {'wall s':>6}  verify")
    try:
        with spawn() as url:
            for n in range(args.tries):
                row = await one_try(root, url, args, n)
                for k in totals:
                    totals[k] += int(str(row[k]))
                wall = float(str(row["wall_s"]))
                print(
                    f"{n + 1:>3} {row['starts']:>6} {row['kills']:>5} {row['answered']:>8} {row['lost']:>4} "
                    f"{row['failed_restarts']:>15} {row['errors']:>6} {wall:>6.1f}  {row['verify']}"
                )
                if row["first_failure"]:
                    print(f"    first failure: {row['first_failure']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"all {totals['starts']:>6} {totals['kills']:>5} {totals['answered']:>8} {totals['lost']:>4} "
        f"{totals['failed_restarts']:>15} {totals['errors']:>6}"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--deadline", type=float, default=600.0, help="seconds per try at most")
    anyio.run(main, p.parse_args())
