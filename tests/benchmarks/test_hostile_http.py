"""A small seeded run of the hostile HTTP campaign, held to the campaign's own goals."""

from __future__ import annotations

import anyio
import pytest

from benchmarks.hostile.http import campaign, report

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
    assert results[0].dropped >= 1 and {"slowloris", "slow_body", "oversized"} <= set(results[0].by_kind), summary
