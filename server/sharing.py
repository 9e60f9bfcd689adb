"""What replicas may share, built once per lifespan: the rate limiter, the response cache, the Redis connection.

Without `MODEL_GATEWAY_SHARED_STATE` (or `shared_state.url`), buckets and the
cache live in this process: the embedded default. With it, both move to Redis.
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

    async def run(self) -> None:
        """Background work for the lifespan's task group: health probes of the shared state, if any."""
        if self.shared is not None:
            await self.shared.run()


@asynccontextmanager
async def sharing(settings: Settings, registry: CollectorRegistry) -> AsyncIterator[Sharing]:
    perf = settings.manifests.performance
    cfg = perf.shared_state
    if settings.shared_state_url is None:
        store = LocalStore(perf.response_cache.max_entries, perf.response_cache.max_bytes)
        yield Sharing(RateLimiter(perf.rate_limits), ResponseCache(perf.response_cache, store, registry), None)
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
