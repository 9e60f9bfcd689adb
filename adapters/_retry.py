"""The one retry policy of every adapter: retry only what the upstream itself scheduled.

The router owns fallback. It holds the ordered candidates, the circuit breakers
and the caller's deadline; a failure it sees moves the call to the next
candidate at once and counts toward that adapter's breaker. An adapter that
retried on its own would hide failures from the breaker, multiply the load on
an upstream exactly when it is failing (two blind retries triple it), and spend
the caller's deadline on one candidate while the others wait.

So an adapter retries in one case only: the upstream answered 429 or 5xx WITH a
`Retry-After` (it said when it will serve), the wait fits within `max_wait_s`, and
the wait plus about as long as the failed try took still fits in the caller's
deadline. Then the call stays with the route's preferred candidate at the cost the
upstream named. Everything else (refused connections, timeouts, 5xx without
`Retry-After`, malformed answers) goes to the router at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from adapters.errors import AdapterError, UpstreamStatusError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    max_wait_s: float = 30.0

    def wait_before_retry(self, err: AdapterError, tries: int, took_s: float) -> float | None:
        """Seconds to wait before trying again, or None when the error goes to the caller now."""
        if tries >= self.max_retries or not isinstance(err, UpstreamStatusError) or not err.retryable:
            return None
        wait = err.retry_after_s
        if wait is None or wait > self.max_wait_s:
            return None
        remaining = anyio.current_effective_deadline() - anyio.current_time()
        return wait if wait + took_s <= remaining else None

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        tries = 0
        while True:
            started = anyio.current_time()
            try:
                return await attempt()
            except AdapterError as err:
                wait = self.wait_before_retry(err, tries, anyio.current_time() - started)
                if wait is None:
                    raise
            tries += 1
            await anyio.sleep(wait)


RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_retries=0)
