"""Run the gateway's ratio benchmarks and print a table plus a JSON file of ratios.

    python -m benchmarks [--only 1,7,14] [--rounds 5] [--quick] [--json .bench/results.json]

Every compared pair runs interleaved in this one run (warm-up first, then
A B / B A rounds, median over rounds), so a noisy shared machine moves both
sides alike. Benchmarks assert nothing; a missed target shows as "NO".
Benchmark 14 needs its peers: run benchmarks/setup_peers.sh once.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from benchmarks.core import Plan, Row, table, write_json

Bench = Callable[[Plan], Awaitable[list[Row]]]


def registry() -> list[tuple[tuple[str, ...], str, Bench]]:
    from benchmarks import b_calls, b_deploy, b_discovery, b_mlx, b_peers, b_remote, b_shedding, b_startup, b_upstream

    return [
        (("1", "7"), "stdio call latency and throughput", b_calls.bench_stdio),
        (("2",), "in-process call latency", b_calls.bench_in_process),
        (("3",), "adapter vs raw HTTP", b_upstream.bench_adapter_http),
        (("4", "5"), "batch sizes end to end", b_upstream.bench_batch_sizes),
        (("6",), "coalescing over stdio", b_upstream.bench_coalescing_stdio),
        (("6",), "coalescing over HTTP", b_upstream.bench_coalescing_http),
        (("6",), "coalescing over MLX", b_mlx.bench_coalescing_mlx),
        (("8",), "spawn to first tools/list", b_startup.bench_spawn),
        (("9",), "concurrent discovery", b_discovery.bench_discovery),
        (("10",), "memory", b_startup.bench_memory),
        (("11",), "Streamable HTTP call latency", b_calls.bench_http),
        (("12",), "MLX warm vs fresh process", b_mlx.bench_mlx_warm),
        (("13",), "remote MCP two-hop", b_remote.bench_remote),
        (("14",), "peers: ollama-mcp and LiteLLM", b_peers.bench_peers),
        (("15",), "shedding: busy answers and goodput", b_shedding.bench_shedding),
        (("16",), "team deployment: replicas behind HAProxy, Redis limits, response cache", b_deploy.bench_deployment),
    ]


def machine(blas: str) -> dict[str, object]:
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "blas": blas,
    }


async def run(selected: list[tuple[tuple[str, ...], str, Bench]], plan: Plan) -> list[Row]:
    rows: list[Row] = []
    for numbers, title, bench in selected:
        print(f"[{'/'.join(numbers)}] {title} …", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            found = await bench(plan)
        except Exception as exc:  # one broken benchmark must not hide the others' results
            found = [Row(numbers[0], title, skipped=f"failed: {type(exc).__name__}: {exc}"[:300], error=True)]
        print(f"    done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        rows += found
    return rows


def _with_openblas() -> str:
    """Put OpenBLAS in front of MLX in this process, as the MLX adapter does in `serve`."""
    from adapters._blas import load_openblas

    return load_openblas()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated benchmark numbers, e.g. 1,7,14")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per comparison (default 5)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--json", type=Path, default=Path(".bench/results.json"), help="where to write the ratios")
    args = parser.parse_args(argv)
    blas = _with_openblas()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    wanted = {n.strip() for n in args.only.split(",")} if args.only else None
    selected = [entry for entry in registry() if wanted is None or wanted & set(entry[0])]
    plan = Plan(rounds=max(1, args.rounds), quick=args.quick)
    rows = anyio.run(run, selected, plan)
    meta = {
        "machine": machine(blas),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rounds": plan.rounds,
        "quick": plan.quick,
    }
    write_json(rows, args.json, meta)
    m = meta["machine"]
    assert isinstance(m, dict)
    print(f"\n{m['cpu']}, {m['cores']} cores, {m['system']}, Python {m['python']}, BLAS {m['blas']}")
    print(table(rows))
    print(f"\nratios written to {args.json}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
