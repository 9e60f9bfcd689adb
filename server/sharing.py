"""What replicas may share, built once per state by `open_state()`: the rate limiter, the response cache, Redis.

Without `MODEL_GATEWAY_SHARED_STATE` (or `shared_state.url`), buckets and the
cache live in this process: the embedded default. With it, both move to Redis,
and the Redis connection's health probe runs in the state's task group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from server.config import Settings
from server.ratelimit import Limiter, RateLimiter
from server.response_cache import LocalStore, RedisStore, ResponseCache
from server.shared_limits import RedisRateLimiter
from server.shared_state import SharedState


@dataclass(frozen=True)
class Sharing:
    limiter: Limiter
    cache: ResponseCache
    shared: SharedState | None


@asynccontextmanager
async def sharing(settings: Settings, registry: CollectorRegistry) -> AsyncIterator[Sharing]:
    """The limiter and the cache, in this process or in Redis; the Redis connection is closed on exit."""
    perf = settings.manifests.performance
    cfg = perf.shared_state
    if settings.shared_state_url is None:
        store = LocalStore(perf.response_cache.max_entries, perf.response_cache.max_bytes)
        cache = ResponseCache(perf.response_cache, store, registry)
        yield Sharing(RateLimiter(perf.rate_limits), cache, None)
        return
    password = settings.secrets.get(cfg.password_env) if cfg.password_env else None
    shared = SharedState(settings.shared_state_url, cfg, registry, password)
    try:
        limiter = RedisRateLimiter(perf.rate_limits, shared, cfg)
        cache = ResponseCache(perf.response_cache, RedisStore(shared, cfg.key_prefix), registry)
        yield Sharing(limiter, cache, shared)
    finally:
        await shared.aclose()


def sharing_health(shared: SharedState | None, cache: ResponseCache) -> dict[str, Any]:
    """The `shared_state` section of health: where buckets and cache live, and whether Redis answers."""
    state = shared.health() if shared is not None else {"backend": "local"}
    return {**state, "response_cache": cache.health()}
