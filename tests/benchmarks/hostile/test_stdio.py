"""A small seeded run of the stdio hostile campaign against the real server process.

The same figures as `python -m benchmarks.hostile`, with a line cap of 64 KiB so the
limits +/- 1 cost little. Timing figures (the longest event-loop block) are reported by the
campaign, not asserted here; this checks that the server measured one.
"""

from __future__ import annotations

import pytest

from benchmarks.hostile import stdio
from benchmarks.hostile.record import RSS_SLACK_MIB, Plan
from tests.support.processes import ROOT

pytestmark = pytest.mark.e2e


def test_hostile_stdio_traffic_crashes_nothing_hangs_nothing_and_writes_only_json() -> None:
    result = stdio.run(Plan(seed=7, scale=0.05, line_cap=64 * 1024), ROOT)
    assert result.tries >= 150
    assert result.crashes == 0, result.examples
    assert result.hangs == 0, result.examples
    assert result.non_json_bytes == 0, result.examples
    assert result.unanswered == 0, result.examples
    assert result.unclean_exits == 0, result.examples
    assert result.peak_rss_mib <= 2 * result.idle_rss_mib + RSS_SLACK_MIB
    assert result.loop_block_ms is not None
    assert result.largest_error_bytes < 1024 and result.longest_log_line < 4096  # nothing of the input echoed
