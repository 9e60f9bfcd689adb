"""The hostile-upstream campaign runs end to end against the real server: a small subset, the same checks.

Timings are printed by the campaign, never asserted here; what is asserted is what must hold on any machine:
the server survives every fault, answers every call, keeps stdout JSON-only and serves again afterwards.
"""

from __future__ import annotations

import anyio
import pytest

from benchmarks.hostile.upstream import campaign, report, scenarios
from tests.support.processes import ROOT

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
SUBSET = ("200 MB body, chunked", "6,000,000-dimension vector", "malformed JSON", "connection dropped")


async def test_the_server_survives_oversized_wide_and_broken_upstream_answers() -> None:
    chosen = [s for s in scenarios() if s.name in SUBSET]
    with anyio.fail_after(240):
        outcomes, totals = await campaign(1, ROOT, chosen)
    print(report(outcomes, totals))
    assert [o.tries for o in outcomes] == [1] * len(SUBSET)
    assert sum(o.crashes + o.hangs + o.unrecovered for o in outcomes) == 0
    assert totals["non_json_stdout_lines"] == 0
    got = {o.scenario: o.client_got for o in outcomes}
    assert "response limit of 33554432 bytes" in got["200 MB body, chunked"]
    assert "the limit is 65536" in got["6,000,000-dimension vector"]
    assert all(text.startswith("tool error") for text in got.values())
