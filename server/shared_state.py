"""Shared state in Redis: one pooled client per replica, a deadline on every call, a record of whether it is up.

Replicas behind a load balancer keep their rate-limit buckets
(`server.shared_limits`) and response cache (`server.response_cache`) here.
Every call runs under `deadline_ms`, connecting included, and is never retried
by the client: a retried bucket script could take a call's units twice. After
a failure, calls skip Redis for `retry_s` and take the operator's choice
(`on_unavailable`) at once instead of each waiting out a deadline; a background
probe (owned by the lifespan's task group) pings every `probe_interval_s`, so
health shows a recovery without traffic.

The client is redis-py's `redis.asyncio`, an optional extra
(`pip install 'brainwav-model-gateway[redis]'`). It runs on asyncio, which is
the backend anyio runs the gateway on; cancellation (a deadline, a client
going away) drops the connection mid-command rather than reusing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import SecretStr

from server.errors import ConfigError
from server.manifests import SharedStateConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("model_gateway.shared_state")
T = TypeVar("T")
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class SharedStateDown(Exception):
    """Redis did not answer (in time, or at all); callers turn this into their `on_unavailable` choice."""


def display_url(url: str) -> str:
    """The URL without credentials: safe for health, logs and errors."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path or '/0'}"


class SharedStateMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "model_gateway_shared_state_"
        self.up = Gauge(p + "up", "1 when the last call to the shared state (Redis) succeeded.", registry=registry)
        self.errors = Counter(
            p + "errors_total",
            "Calls to the shared state that failed or were skipped.",
            ["operation", "error"],
            registry=registry,
        )
        self.fallbacks = Counter(
            p + "fallbacks_total",
            "Rate-limit checks decided without the shared state, by choice.",
            ["choice"],
            registry=registry,
        )
        self.duration = Histogram(
            p + "call_duration_seconds",
            "One call to the shared state.",
            ["operation"],
            buckets=BUCKETS,
            registry=registry,
        )


class SharedState:
    """The Redis connection of one replica and what it knows about Redis being up."""

    def __init__(
        self,
        url: SecretStr,
        config: SharedStateConfig,
        registry: CollectorRegistry,
        password: SecretStr | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.url = display_url(url.get_secret_value())
        self.metrics = SharedStateMetrics(registry)
        self.up: bool | None = None  # None until the first answer or failure
        self.error: str | None = None
        self._clock = clock
        self._skip_until = 0.0
        self._deadline_s = config.deadline_ms / 1000
        self.client = _client(url, config, password)

    async def call(self, operation: str, fn: Callable[[Redis], Awaitable[T]], force: bool = False) -> T:
        """`fn(client)` under the deadline; raises SharedStateDown on any failure or while skipping Redis."""
        if not force and self._clock() < self._skip_until:
            self.metrics.errors.labels(operation, "skipped").inc()
            raise SharedStateDown(self.error or "shared state unavailable")
        from redis.exceptions import RedisError

        started = time.perf_counter()
        try:
            with anyio.fail_after(self._deadline_s):
                result = await fn(self.client)
        except (OSError, RedisError) as exc:  # OSError covers the deadline's TimeoutError
            raise self._failed(operation, exc) from exc
        self.metrics.duration.labels(operation).observe(time.perf_counter() - started)
        if self.up is not True:
            log.info("shared state %s is up", self.url)
        self.up, self.error, self._skip_until = True, None, 0.0
        self.metrics.up.set(1)
        return result

    def _failed(self, operation: str, exc: BaseException) -> SharedStateDown:
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if isinstance(exc, TimeoutError | RedisTimeoutError):
            kind, why = "timeout", f"no answer within {self.config.deadline_ms:g} ms"
        elif isinstance(exc, ResponseError):
            kind, why = "response", f"error reply: {str(exc)[:160]}"
        else:
            kind, why = "connection", f"{type(exc).__name__}: {str(exc)[:160]}"
        self.metrics.errors.labels(operation, kind).inc()
        self.metrics.up.set(0)
        if self.up is not False:
            log.warning("shared state %s unavailable (%s): %s", self.url, operation, why)
        self.up, self.error = False, why
        self._skip_until = self._clock() + self.config.retry_s
        return SharedStateDown(why)

    async def ping(self) -> bool:
        try:
            await self.call("probe", lambda r: r.ping(), force=True)  # type: ignore[arg-type]
        except SharedStateDown:
            return False
        return True

    async def run(self) -> None:
        """Ping forever; the lifespan's task group owns and cancels this."""
        while True:
            await self.ping()
            await anyio.sleep(self.config.probe_interval_s)

    async def aclose(self) -> None:
        with anyio.move_on_after(2, shield=True):
            await self.client.aclose()
            await self.client.connection_pool.aclose()

    def health(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "url": self.url,
            "up": self.up,
            "error": self.error,
            "on_unavailable": self.config.on_unavailable,
            "deadline_ms": self.config.deadline_ms,
        }


def _client(url: SecretStr, config: SharedStateConfig, password: SecretStr | None) -> Redis:
    try:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:
        raise ConfigError("shared state needs the Redis client: pip install 'brainwav-model-gateway[redis]'") from exc
    deadline_s = config.deadline_ms / 1000
    kwargs: dict[str, Any] = {
        "max_connections": config.max_connections,
        "timeout": deadline_s,  # waiting for a free pooled connection
        "socket_timeout": deadline_s,
        "socket_connect_timeout": deadline_s,
        "retry": Retry(NoBackoff(), 0),
        "client_name": "model-gateway",
    }
    if password is not None:
        kwargs["password"] = password.get_secret_value()
    try:
        pool = BlockingConnectionPool.from_url(url.get_secret_value(), **kwargs)
    except ValueError as exc:
        raise ConfigError(f"shared state URL {display_url(url.get_secret_value())}: {exc}") from exc
    return Redis(connection_pool=pool)
