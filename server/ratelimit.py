"""Rate limits and quotas: token buckets per (rule, principal, tool).

A call must find room in every bucket whose rule matches its principal and
tool; it takes from all of them or from none. Over the limit is a retryable
tool error that says when to retry. A call bigger than a bucket can ever hold
is a plain limit error: retrying would not help.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from server.errors import LimitError, RateLimitedError
from server.manifests import RateLimitConfig, RateLimitRule


@dataclass(slots=True)
class Bucket:
    tokens: float
    stamp: float

    def refill(self, rule: RateLimitRule, now: float) -> None:
        self.tokens = min(rule.burst, self.tokens + (now - self.stamp) * rule.rate_per_s)
        self.stamp = now


class RateLimiter:
    def __init__(self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._buckets: dict[tuple[str, str, str], Bucket] = {}

    def acquire(self, principal: str, tool: str, units: Mapping[str, int]) -> None:
        """Take this call's units from every matching bucket, or raise without taking any."""
        if not self.config.rules:
            return
        now = self._clock()
        taken: list[tuple[Bucket, float]] = []
        for rule in self.config.rules:
            if not (fnmatchcase(principal, rule.principal) and fnmatchcase(tool, rule.tool)):
                continue
            cost = 1.0 if rule.unit == "calls" else float(units.get(rule.unit, 0))
            if cost > rule.burst:
                raise LimitError(
                    f"quota {rule.id!r}: this {tool} call needs {cost:g} {rule.unit}, more than the "
                    f"{rule.burst:g} allowed at once; split the request"
                )
            bucket = self._bucket(rule, principal, tool, now)
            if bucket.tokens < cost:
                wait = (cost - bucket.tokens) / rule.rate_per_s
                raise RateLimitedError(
                    f"rate limit {rule.id!r} reached for {principal} on {tool} "
                    f"({rule.rate_per_s:g} {rule.unit}/s, burst {rule.burst:g}); retry in {wait:.2f} s"
                )
            taken.append((bucket, cost))
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
