"""Each benchmark runs end to end in a tiny configuration and yields well-formed rows.

Nothing here looks at timings: a benchmark that cannot run (a broken server
path, a fake that no longer answers) fails; one whose optional dependency is
missing (model pack, peers) reports itself skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest

from benchmarks import b_calls, b_deploy, b_discovery, b_mlx, b_peers, b_remote, b_shedding, b_startup, b_upstream
from benchmarks.__main__ import main
from benchmarks.core import Plan, Row

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
TINY = Plan(rounds=1, quick=True)


def _well_formed(rows: list[Row], numbers: set[str]) -> None:
    assert rows, "a benchmark returned no rows"
    for row in rows:
        assert not row.error, row.skipped
        assert row.bench.split("-")[0] in numbers
        if row.skipped is None:
            assert row.measured is not None
            # a growth can truly be zero; every other figure is a time, a rate or a size
            assert row.measured >= 0 if row.bench.endswith("-growth") else row.measured > 0, row


async def test_stdio_call_benchmarks_measure_gateway_and_bare_server() -> None:
    with anyio.fail_after(90):
        rows = await b_calls.bench_stdio(TINY)
    _well_formed(rows, {"1", "7"})
    assert {r.bench for r in rows} == {"1", "1-nosync", "7"}


async def test_in_process_and_adapter_benchmarks_run() -> None:
    with anyio.fail_after(90):
        rows = await b_calls.bench_in_process(TINY) + await b_upstream.bench_adapter_http(TINY)
    _well_formed(rows, {"2", "3"})
    assert all(r.extra.get("clients_built") == 0 for r in rows if r.bench.startswith("3") and not r.skipped)


async def test_batch_coalescing_and_startup_benchmarks_run() -> None:
    with anyio.fail_after(300):
        rows = await b_upstream.bench_batch_sizes(TINY)
        rows += await b_upstream.bench_coalescing_stdio(TINY)
        rows += await b_startup.bench_spawn(TINY)
    _well_formed(rows, {"4", "5", "6", "8"})
    assert {"4", "5", "5-b64", "6-stdio", "8", "8-shipped", "8-nofast", "8-call"} == {r.bench for r in rows}


async def test_http_coalescing_memory_and_streamable_http_benchmarks_run() -> None:
    with anyio.fail_after(300):
        rows = await b_upstream.bench_coalescing_http(TINY)
        rows += await b_startup.bench_memory(TINY)
        rows += await b_calls.bench_http(TINY)
    _well_formed(rows, {"6", "10", "11"})
    assert {"6-http", "10", "10-growth", "11", "11-front"} == {r.bench for r in rows}


async def test_shedding_benchmark_measures_busy_answers_and_goodput() -> None:
    with anyio.fail_after(120):
        rows = await b_shedding.bench_shedding(TINY)
    _well_formed(rows, {"15"})
    assert {"15", "15-100", "15-200"} == {r.bench for r in rows}
    assert all(r.extra.get("errors_per_s") == 0 for r in rows if r.bench != "15")


async def test_discovery_benchmark_probes_concurrently_not_in_sequence() -> None:
    with anyio.fail_after(30):
        rows = await b_discovery.bench_discovery(TINY)
    _well_formed(rows, {"9"})
    # an event-free structural check: the sequential wall includes every probe's sleep, the concurrent one cannot
    concurrent, sequential = rows[0].measured, rows[1].measured
    assert concurrent is not None and sequential is not None and sequential > concurrent


@pytest.mark.parametrize("bench", [b_mlx.bench_mlx_warm, b_mlx.bench_coalescing_mlx, b_remote.bench_remote])
async def test_optional_benchmarks_run_or_report_skipped(bench: object) -> None:
    with anyio.fail_after(120):
        rows = await bench(TINY)  # type: ignore[operator]
    _well_formed(rows, {"6", "12", "13"})


async def test_deployment_benchmark_runs_replicas_limits_and_cache_or_reports_skipped() -> None:
    with anyio.fail_after(240):
        rows = await b_deploy.bench_deployment(TINY)
    _well_formed(rows, {"16"})
    assert {r.bench for r in rows} == set(b_deploy.TITLES)


def test_cli_writes_a_json_file_of_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    assert main(["--only", "9", "--rounds", "1", "--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["machine"]["cores"] and data["results"][0]["bench"] == "9"
    assert "| 9 |" in capsys.readouterr().out


@pytest.mark.skipif(
    not (b_peers.OLLAMA_MCP.is_file() or b_peers.LITELLM.is_file()) or not os.environ.get("MODEL_GATEWAY_BENCH_PEERS"),
    reason="peers not installed (benchmarks/setup_peers.sh) or MODEL_GATEWAY_BENCH_PEERS unset (takes ~1 min)",
)
async def test_peer_benchmark_runs_against_installed_peers() -> None:
    with anyio.fail_after(300):
        rows = await b_peers.bench_peers(TINY)
    _well_formed(rows, {"14"})
