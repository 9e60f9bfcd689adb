"""The event-loop watchdog: what it keeps, and the report the hostile campaign reads."""

from __future__ import annotations

import anyio
import pytest

from benchmarks.hostile.harness import LOOP_REPORT
from server.loopwatch import LoopWatch, wanted

pytestmark = pytest.mark.anyio


def test_the_watch_keeps_the_longest_block_and_how_much_of_it_the_process_was_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    watch = LoopWatch()
    watch._note(120.0, 20.0)  # mostly descheduled
    watch._note(60.0, 60.0)  # all of it our own work
    watch._note(3.0, 3.0)
    assert (watch.longest_ms, watch.longest_busy_of_it_ms, watch.longest_busy_ms) == (120.0, 20.0, 60.0)
    watch.report()
    m = LOOP_REPORT.search(capsys.readouterr().err.encode())
    assert m is not None and (float(m.group(1)), float(m.group(2))) == (120.0, 60.0)


async def test_the_watch_reports_when_its_task_is_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(LoopWatch().run)
        await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert "event loop: longest block" in capsys.readouterr().err


def test_the_watch_is_off_unless_asked_for() -> None:
    assert (
        not wanted({}) and not wanted({"MODEL_GATEWAY_LOOP_WATCH": "0"}) and wanted({"MODEL_GATEWAY_LOOP_WATCH": "1"})
    )
