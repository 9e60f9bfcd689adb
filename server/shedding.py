"""Cheap shedding: over `max_in_flight`, a call gets a fast "busy" answer that costs almost nothing.

A busy answer touches no upstream, no policy and no fsync of its own: over
Streamable HTTP it is given at the HTTP edge, before the MCP SDK reads the
request (server/busy_edge.py); elsewhere, and for a call that reaches the tool
as the last slot is taken, the tool refuses it before its arguments are even
validated. Either way it is counted here. The trail stays
honest through counted summaries: the first busy answer of an interval
appends one non-durable `shed` record (made durable by the next durable
write, as every start record is), and the count of the ones after it rides in
the next summary, or in the last one written when the gateway stops.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

SUMMARY_INTERVAL_S = 1.0
Write = Callable[[dict[str, Any]], Awaitable[None]]


class Shedder:
    def __init__(self, max_in_flight: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._clock = clock
        self._pending: Counter[str] = Counter()  # busy answers not yet in a summary record
        self._since = 0.0
        self._last_summary = -SUMMARY_INTERVAL_S
        self.total = 0

    def enter(self) -> bool:
        """Admit one more call, or say it must be shed."""
        if self.in_flight >= self.max_in_flight:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def message(self) -> str:
        return f"gateway busy: {self.in_flight} calls in flight (limit {self.max_in_flight}); retry shortly"

    async def shed(self, tool: str, write: Write) -> None:
        """Count one busy answer; at most one summary record per interval."""
        now = self._clock()
        if not self._pending:
            self._since = time.time()
        self._pending[tool] += 1
        self.total += 1
        if now - self._last_summary >= SUMMARY_INTERVAL_S:
            self._last_summary = now
            await self.flush(write)

    async def flush(self, write: Write) -> None:
        """Write the counts not yet summarised (non-durable: the next durable write, or close, syncs it)."""
        if not self._pending:
            return
        counts, self._pending = dict(self._pending), Counter()
        await write(
            {
                "event": "shed",
                "outcome": "busy",
                "count": sum(counts.values()),
                "tools": counts,
                "since": round(self._since, 3),
            }
        )
