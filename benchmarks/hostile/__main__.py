"""python -m benchmarks.hostile [--part stdio|http|upstream] [--seed N] [--scale X] [--line-cap BYTES] [--root DIR]
                               [--json FILE]

Runs each selected part (default: all three, one after another) against the real server
process and prints their figures and goals in one table: stdio (hostile lines on the pipes),
http (hostile HTTP clients against both HTTP transports) and upstream (an upstream that
misbehaves on purpose, behind a stdio server). `--line-cap` applies to the stdio part.
`--root` runs the server from another checkout (e.g. a `git archive` of an older commit), so
the same campaign measures before and after. Exit code 0 whatever the figures: the table says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.hostile import http, stdio, upstream
from benchmarks.hostile.record import Part, Plan, Result, table, write_json
from tests.support.processes import ROOT

PARTS: dict[str, Part] = {"stdio": stdio.PART, "http": http.PART, "upstream": upstream.PART}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hostile")
    p.add_argument("--part", action="append", choices=sorted(PARTS), help="default: every part")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every count (0.1: a quick run)")
    p.add_argument("--line-cap", type=int, help="run the server with this stdio line cap (bytes)")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose server is run")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    plan = Plan(seed=args.seed, scale=args.scale, line_cap=args.line_cap)
    results: list[tuple[Part, Result]] = []
    for name in args.part or list(PARTS):
        part = PARTS[name]
        print(f"[hostile] {name} …", file=sys.stderr, flush=True)
        result = part.run(plan, args.root.resolve())
        results.append((part, result))
    print(table(results, plan))
    for part, result in results:
        for example in result.examples:
            print(f"  {part.name}: {example}")
    if args.json is not None:
        write_json(args.json, results, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
