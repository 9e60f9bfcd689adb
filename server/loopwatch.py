"""An event-loop watchdog for diagnosis: how long the loop was ever kept from running its tasks.

Off unless asked for (`MODEL_GATEWAY_LOOP_WATCH=1`; it then costs one wake-up every
`INTERVAL_S`). When on, a task sleeps `INTERVAL_S` at a time and notes how late it woke: that
lateness is the longest stretch in which something held the loop (a parse, a serialisation,
a blocking call). A new maximum over `WARN_MS` is logged at once; the maximum is written to
stderr when the server stops, as `event loop: longest block N ms`, which
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
        self.longest_ms = 0.0
        self.started = time.monotonic()

    async def run(self) -> None:
        """Until cancelled; the report is written on the way out."""
        try:
            while True:
                before = time.monotonic()
                await anyio.sleep(INTERVAL_S)
                late_ms = (time.monotonic() - before - INTERVAL_S) * 1000
                if late_ms > self.longest_ms:
                    self.longest_ms = late_ms
                    if late_ms > WARN_MS:
                        log.warning("event loop blocked for %.1f ms", late_ms)
        finally:
            self.report()

    def report(self) -> None:
        seconds = time.monotonic() - self.started
        sys.stderr.write(f"model-gateway: event loop: longest block {self.longest_ms:.1f} ms over {seconds:.0f} s\n")
        sys.stderr.flush()
