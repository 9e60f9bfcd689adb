"""Rate limits shared by replicas: the token buckets of `server.ratelimit`, kept in Redis.

One server-side Lua script checks and takes from every bucket a call matches,
or from none: Redis runs a script alone, so two replicas can never both take
the last token. Time is Redis's own (`TIME`), so replicas' clocks never enter
the arithmetic. A bucket key expires once its bucket would have refilled
completely (a missing bucket is a full one), so idle principals cost Redis
nothing. A key under the prefix that is not a bucket, or holds values that are
not numbers, is treated as a full bucket and rewritten.

When Redis cannot be reached the operator's `on_unavailable` decides: `closed`
refuses the call with a retryable error (the default: a quota is a promise),
`local` checks this replica's own in-process buckets, `open` admits it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from server.errors import SharedStateUnavailableError
from server.manifests import RateLimitConfig, SharedStateConfig
from server.ratelimit import Charge, RateLimiter, charges, rate_limited
from server.shared_state import SharedState, SharedStateDown

log = logging.getLogger("model_gateway.shared_limits")

# KEYS[i]: bucket i. ARGV[3i-2], ARGV[3i-1], ARGV[3i]: its refill rate (units/s), its size, this call's cost.
# Returns {0, ""} when every bucket had room (all were taken from), else {i, wait_s} for the first that had not
# (none was taken from). Numbers go back as strings: Redis truncates Lua numbers to integers.
TAKE_ALL_OR_NONE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local level = {}
for i, key in ipairs(KEYS) do
  local rate, burst, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local tokens = burst
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'hash' then
    local b = redis.call('HMGET', key, 'tokens', 'stamp')
    local bt, bs = tonumber(b[1]), tonumber(b[2])
    if bt and bs and bt == bt and bs == bs then
      tokens = math.min(burst, math.max(0, bt) + math.max(0, now - bs) * rate)
    end
  elseif kind ~= 'none' then
    redis.call('DEL', key)
  end
  if tokens < cost then
    return {i, string.format('%.6f', (cost - tokens) / rate)}
  end
  level[i] = tokens - cost
end
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1])
  redis.call('HSET', key, 'tokens', string.format('%.17g', level[i]), 'stamp', string.format('%.6f', now))
  local ttl = math.min(math.ceil((burst - level[i]) / rate * 1000) + 1000, 1e15)
  redis.call('PEXPIRE', key, string.format('%d', ttl))
end
return {0, ''}
"""


def bucket_key(prefix: str, rule_id: str, principal: str, tool: str) -> str:
    """One key per (rule, principal, tool); the hash tag keeps one call's buckets in one cluster slot."""
    who = hashlib.sha256(f"{principal}\0{tool}".encode()).hexdigest()[:32]
    return f"{prefix}rl:{{{who}}}:{rule_id}"


class RedisRateLimiter:
    def __init__(self, config: RateLimitConfig, shared: SharedState, shared_config: SharedStateConfig) -> None:
        self.config = config
        self.shared = shared
        self.prefix = shared_config.key_prefix
        self.on_unavailable = shared_config.on_unavailable
        self.local = RateLimiter(config)  # the `local` choice: this replica's own buckets
        self._script = shared.client.register_script(TAKE_ALL_OR_NONE)

    async def acquire(self, principal: str, tool: str, units: Mapping[str, int]) -> None:
        if not self.config.rules:
            return
        found = charges(self.config, principal, tool, units)
        if not found:
            return
        keys = [bucket_key(self.prefix, c.rule.id, principal, tool) for c in found]
        args = [repr(float(v)) for c in found for v in (c.rule.rate_per_s, c.rule.burst, c.cost)]
        try:
            reply = await self.shared.call("ratelimit", lambda r: self._script(keys=keys, args=args, client=r))
            index, wait_s = _parse(reply, len(found))
        except SharedStateDown:
            self._unavailable(principal, tool, found)
            return
        if index:
            raise rate_limited(found[index - 1].rule, principal, tool, wait_s)

    def _unavailable(self, principal: str, tool: str, found: list[Charge]) -> None:
        self.shared.metrics.fallbacks.labels(self.on_unavailable).inc()
        if self.on_unavailable == "closed":
            raise SharedStateUnavailableError(
                "rate limits are kept in shared state that cannot be reached now; retry shortly"
            )
        if self.on_unavailable == "local":
            self.local.take_charges(principal, tool, found)


def _parse(reply: Any, buckets: int) -> tuple[int, float]:
    """The script's answer, checked: anything else is treated like Redis being unavailable."""
    try:
        index, wait = int(reply[0]), reply[1]
        wait_s = float(wait) if index else 0.0
    except (TypeError, ValueError, IndexError) as exc:
        raise SharedStateDown("unexpected reply from the rate-limit script") from exc
    if not 0 <= index <= buckets:
        raise SharedStateDown("unexpected bucket index from the rate-limit script")
    return index, wait_s
