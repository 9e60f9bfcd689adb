"""An event-loop watchdog for diagnosis: how long the loop was ever kept from running its tasks.

Off unless asked for (`MODEL_GATEWAY_LOOP_WATCH=1`; it then costs one wake-up every
`INTERVAL_S`). When on, a task sleeps `INTERVAL_S` at a time and notes how late it woke: that
lateness is the longest stretch in which something held the loop (a parse, a serialisation,
a blocking call, another thread holding the GIL). On a shared machine lateness also counts
time the process was not scheduled at all, so each late wake-up is also measured in CPU time
used by the process meanwhile: `busy` is the part of the block this process was running.

A new maximum over `WARN_MS` is logged at once; when the server stops, stderr gets
`event loop: longest block N ms (busy M ms); longest busy block B ms`, which
`python -m benchmarks.hostile` reads.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping

import anyio

ENV = "MODEL_GATEWAY_LOOP_WATCH"
INTERVAL_S = 0.005
WARN_MS = 50.0

log = logging.getLogger("model_gateway.loop")


def wanted(env: Mapping[str, str]) -> bool:
    return env.get(ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class LoopWatch:
    def __init__(self) -> None:
        self.longest_ms = 0.0  # wall-clock lateness
        self.longest_busy_of_it_ms = 0.0  # how much of that longest block the process was running
        self.longest_busy_ms = 0.0  # the longest block counting only time the process was running
        self.started = time.monotonic()

    async def run(self) -> None:
        """Until cancelled; the report is written on the way out."""
        try:
            while True:
                wall, cpu = time.monotonic(), time.process_time()
                await anyio.sleep(INTERVAL_S)
                late_ms = (time.monotonic() - wall - INTERVAL_S) * 1000
                busy_ms = min(late_ms, (time.process_time() - cpu) * 1000)
                self._note(late_ms, busy_ms)
        finally:
            self.report()

    def _note(self, late_ms: float, busy_ms: float) -> None:
        if late_ms > self.longest_ms:
            self.longest_ms, self.longest_busy_of_it_ms = late_ms, busy_ms
        if busy_ms > self.longest_busy_ms:
            self.longest_busy_ms = busy_ms
            if busy_ms > WARN_MS:
                log.warning("event loop blocked for %.1f ms while this process ran", busy_ms)

    def report(self) -> None:
        seconds = time.monotonic() - self.started
        sys.stderr.write(
            f"model-gateway: event loop: longest block {self.longest_ms:.1f} ms "
            f"(busy {self.longest_busy_of_it_ms:.1f} ms); longest busy block {self.longest_busy_ms:.1f} ms "
            f"over {seconds:.0f} s\n"
        )
        sys.stderr.flush()
