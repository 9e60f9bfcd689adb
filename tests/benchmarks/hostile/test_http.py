"""A small seeded run of the hostile HTTP campaign, held to the campaign's own goals."""

from __future__ import annotations

import anyio
import pytest

from benchmarks.hostile.__main__ import PARTS
from benchmarks.hostile.harness import ServerFigures
from benchmarks.hostile.http import CLEAN_EXITS, PhaseResult, as_result, campaign, report

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_a_seeded_hostile_http_run_crashes_nothing_hangs_nothing_and_crosses_no_principal() -> None:
    with anyio.fail_after(240):
        results = await campaign(tries=300, seed=3)
    summary = report(results)
    assert sum(r.tries for r in results) >= 300, summary
    for r in results:
        assert not r.crashed and r.hangs == 0, summary
        assert r.cross_principal == 0 and r.held_open == 0 and r.lockouts == 0, summary
        assert r.rss_ok, summary
        assert r.released == r.dropped == r.audited_cancelled, summary
        assert not r.unexpected, summary
        assert r.server.exit_code in CLEAN_EXITS and r.server.stdout_bytes == 0, r.server
        assert r.server.loop_block_ms is not None, r.server  # the server measured its own loop
    assert results[0].dropped >= 1 and {"slowloris", "slow_body", "oversized"} <= set(results[0].by_kind), summary
    combined = as_result(results)
    untimed = {goal: met for goal, met in combined.goals(300).items() if "loop block" not in goal}
    assert all(untimed.values()), (untimed, combined.examples)


def phase(transport: str, *, crashed: bool = False, **server: object) -> PhaseResult:
    figures = ServerFigures(**{"exit_code": None if crashed else 0, **server})  # type: ignore[arg-type]
    return PhaseResult(transport, 10, crashed, 0, 40, 0, 0, 0, 1, 1, 1, 80.0, 90.0, server=figures)


def test_a_crashed_phase_counts_as_a_crash_and_stdout_bytes_as_non_json() -> None:
    result = as_result([phase("streamable-http", stdout_bytes=12, loop_block_ms=7.5), phase("sse", crashed=True)])
    assert (result.tries, result.crashes, result.unclean_exits) == (20, 1, 0)
    assert result.non_json_bytes == 12 and result.loop_block_ms == 7.5
    assert not result.goals(20)["0 crashes"] and not result.goals(20)["0 non-JSON bytes"]


def test_one_campaign_runs_the_stdio_http_and_upstream_parts() -> None:
    assert list(PARTS) == ["stdio", "http", "upstream"]
    assert all(part.name == name for name, part in PARTS.items())
