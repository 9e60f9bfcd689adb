from __future__ import annotations

from typing import Any

import pytest

from server.shedding import SUMMARY_INTERVAL_S, Shedder

pytestmark = pytest.mark.anyio


def test_calls_past_the_limit_are_refused_until_one_leaves() -> None:
    shedder = Shedder(max_in_flight=2)
    assert shedder.enter() and shedder.enter() and not shedder.enter()
    shedder.leave()
    assert shedder.enter() and shedder.in_flight == 2
    assert shedder.message() == "gateway busy: 2 calls in flight (limit 2); retry shortly"


async def test_busy_answers_leave_one_summary_per_interval_and_the_rest_at_the_last_flush() -> None:
    now = [100.0]
    shedder = Shedder(max_in_flight=1, clock=lambda: now[0])
    written: list[dict[str, Any]] = []

    async def write(record: dict[str, Any]) -> None:
        written.append(record)

    for tool in ("embed", "embed", "chat"):
        await shedder.shed(tool, write)
    assert [r["count"] for r in written] == [1]  # the first of the interval, at once
    now[0] += SUMMARY_INTERVAL_S
    await shedder.shed("embed", write)  # the next interval: the counts since ride in its summary
    await shedder.shed("rerank", write)
    await shedder.flush(write)  # the gateway stops
    await shedder.flush(write)  # nothing left: nothing written
    assert [(r["event"], r["count"], r["tools"]) for r in written] == [
        ("shed", 1, {"embed": 1}),
        ("shed", 3, {"embed": 2, "chat": 1}),
        ("shed", 1, {"rerank": 1}),
    ]
    assert shedder.total == 5 and all(r["outcome"] == "busy" for r in written)
