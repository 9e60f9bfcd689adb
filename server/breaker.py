"""Per-adapter circuit breaker: a dead backend costs nothing per call, a healed one is tried again.

    closed --N consecutive retryable failures--> open --cool-down--> half-open
    half-open: one trial call at a time; success -> closed, failure -> open again

A trial whose caller leaves (cancelled, or cut by a deadline the router never
saw) is abandoned, not lost: the breaker stays half-open and admits the next
call as a new trial. Without that, one cancelled trial would keep a healed
backend shut out until a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from server.manifests import BreakerConfig

BreakerState = Literal["closed", "open", "half_open"]


class Breaker:
    def __init__(
        self,
        config: BreakerConfig,
        on_change: Callable[[BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._on_change = on_change
        self._clock = clock
        self._trial_in_flight = False

    def _set(self, state: BreakerState) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    @property
    def blocking(self) -> bool:
        """Open and still cooling down: calls skip this adapter without trying it."""
        return self.state == "open" and self._clock() - self.opened_at < self.config.cooldown_s

    @property
    def state_now(self) -> BreakerState:
        """The state a call arriving now would meet: an open breaker past its cooldown admits a trial."""
        return "half_open" if self.state == "open" and not self.blocking else self.state

    def retry_in_s(self) -> float:
        """Seconds until an open breaker admits its trial call (0 when it would now)."""
        return max(0.0, self.config.cooldown_s - (self._clock() - self.opened_at)) if self.state == "open" else 0.0

    def allow(self) -> bool:
        """May a call go to this adapter now? In half-open state, True admits the one trial."""
        if self.state == "open" and not self.blocking:
            self._set("half_open")
            self._trial_in_flight = False
        if self.state == "half_open":
            if self._trial_in_flight:
                return False
            self._trial_in_flight = True
        return self.state != "open"

    def record(self, ok: bool) -> None:
        self._trial_in_flight = False
        if ok:
            self.failures = 0
            self._set("closed")
            return
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.config.failure_threshold:
            self.opened_at = self._clock()
            self._set("open")

    def abandon(self) -> None:
        """The call `allow()` admitted left without an answer either way: admit the next trial."""
        self._trial_in_flight = False
