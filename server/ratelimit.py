"""Rate limits and quotas: token buckets per (rule, principal, tool), behind one `Limiter` seam.

A call must find room in every bucket whose rule matches its principal and
tool; it takes from all of them or from none. Over the limit is a retryable
tool error that says when to retry. A call bigger than a bucket can ever hold
is a plain limit error: retrying would not help.

`RateLimiter` keeps the buckets in this process (the embedded default);
`server.shared_limits.RedisRateLimiter` keeps them in Redis so that replicas
behind a load balancer share one quota. Both match rules and price calls here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from server.errors import LimitError, RateLimitedError
from server.manifests import RateLimitConfig, RateLimitRule


class Limiter(Protocol):
    async def acquire(self, principal: str, tool: str, units: Mapping[str, int]) -> None:
        """Take this call's units from every matching bucket, or raise a LimitError without taking any."""
        ...


@dataclass(frozen=True, slots=True)
class Charge:
    """What one call costs one matching rule's bucket."""

    rule: RateLimitRule
    cost: float


def charges(config: RateLimitConfig, principal: str, tool: str, units: Mapping[str, int]) -> list[Charge]:
    """The rules this call matches and its cost in each; a cost no bucket can ever hold is a LimitError."""
    found: list[Charge] = []
    for rule in config.rules:
        if not (fnmatchcase(principal, rule.principal) and fnmatchcase(tool, rule.tool)):
            continue
        cost = 1.0 if rule.unit == "calls" else float(units.get(rule.unit, 0))
        if cost > rule.burst:
            raise LimitError(
                f"quota {rule.id!r}: this {tool} call needs {cost:g} {rule.unit}, more than the "
                f"{rule.burst:g} allowed at once; split the request"
            )
        found.append(Charge(rule, cost))
    return found


def rate_limited(rule: RateLimitRule, principal: str, tool: str, wait_s: float) -> RateLimitedError:
    return RateLimitedError(
        f"rate limit {rule.id!r} reached for {principal} on {tool} "
        f"({rule.rate_per_s:g} {rule.unit}/s, burst {rule.burst:g}); retry in {max(wait_s, 0.0):.2f} s"
    )


@dataclass(slots=True)
class Bucket:
    tokens: float
    stamp: float

    def refill(self, rule: RateLimitRule, now: float) -> None:
        self.tokens = min(rule.burst, self.tokens + (now - self.stamp) * rule.rate_per_s)
        self.stamp = now


class RateLimiter:
    """Buckets in this process: exact for one replica, per replica behind a load balancer."""

    def __init__(self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._buckets: dict[tuple[str, str, str], Bucket] = {}

    async def acquire(self, principal: str, tool: str, units: Mapping[str, int]) -> None:
        self.take(principal, tool, units)

    def take(self, principal: str, tool: str, units: Mapping[str, int]) -> None:
        """`acquire` without the await: nothing in here waits."""
        if not self.config.rules:
            return
        self.take_charges(principal, tool, charges(self.config, principal, tool, units))

    def take_charges(self, principal: str, tool: str, found: list[Charge]) -> None:
        now = self._clock()
        taken: list[tuple[Bucket, float]] = []
        for charge in found:
            bucket = self._bucket(charge.rule, principal, tool, now)
            if bucket.tokens < charge.cost:
                raise rate_limited(charge.rule, principal, tool, (charge.cost - bucket.tokens) / charge.rule.rate_per_s)
            taken.append((bucket, charge.cost))
        for bucket, cost in taken:
            bucket.tokens -= cost

    def _bucket(self, rule: RateLimitRule, principal: str, tool: str, now: float) -> Bucket:
        key = (rule.id, principal, tool)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.config.max_buckets:
                self._prune(now)
            bucket = self._buckets[key] = Bucket(rule.burst, now)
        bucket.refill(rule, now)
        return bucket

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely: they hold no state a new bucket would not."""
        rules = {r.id: r for r in self.config.rules}
        for key, b in list(self._buckets.items()):
            b.refill(rules[key[0]], now)
            if b.tokens >= rules[key[0]].burst:
                del self._buckets[key]
        if len(self._buckets) >= self.config.max_buckets:
            oldest = min(self._buckets, key=lambda k: self._buckets[k].stamp)
            del self._buckets[oldest]
