"""One replica's Redis connection: a deadline on every call, Redis skipped after a failure, no credentials shown."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from server.errors import ConfigError
from server.manifests import SharedStateConfig
from server.shared_state import SharedState, SharedStateDown, display_url
from tests.support.processes import free_port
from tests.support.redis_server import MISSING, redis_server, run_redis, silent_listener

pytestmark = pytest.mark.anyio


def errors(registry: CollectorRegistry, operation: str, error: str) -> float:
    labels = {"operation": operation, "error": error}
    return registry.get_sample_value("model_gateway_shared_state_errors_total", labels) or 0.0


def test_the_url_is_shown_without_its_credentials() -> None:
    assert display_url("redis://app:s3cret@cache.internal:6380/2") == "redis://cache.internal:6380/2"
    assert display_url("rediss://:s3cret@[::1]/") == "rediss://[::1]:6379/"
    assert display_url("redis://localhost") == "redis://localhost:6379/0"
    assert display_url("unix://:s3cret@/run/redis.sock?db=3") == "unix:///run/redis.sock"


async def test_a_hung_redis_costs_one_deadline_then_calls_skip_it_until_retry_s() -> None:
    registry = CollectorRegistry()
    cfg = SharedStateConfig(deadline_ms=100, retry_s=300)
    with silent_listener() as url:
        shared = SharedState(SecretStr(url.replace("redis://", "redis://:s3cret@")), cfg, registry)
        try:
            with anyio.fail_after(5):
                with pytest.raises(SharedStateDown, match="no answer within 100 ms"):
                    await shared.call("cache_get", lambda r: r.get("k"))
                with pytest.raises(SharedStateDown):  # skipped: no second wait on a Redis known to be down
                    await shared.call("cache_get", lambda r: r.get("k"))
                assert not await shared.ping()  # the probe still asks
        finally:
            await shared.aclose()
    health = shared.health()
    assert health["up"] is False and health["error"] == "no answer within 100 ms"
    assert "s3cret" not in str(health)
    assert (errors(registry, "cache_get", "timeout"), errors(registry, "cache_get", "skipped")) == (1, 1)
    assert errors(registry, "probe", "timeout") == 1


async def test_a_refused_connection_is_down_at_once_and_an_answer_brings_it_back(tmp_path: Path) -> None:
    if redis_server() is None:
        pytest.skip(MISSING)
    port, registry = free_port(), CollectorRegistry()
    shared = SharedState(SecretStr(f"redis://127.0.0.1:{port}/0"), SharedStateConfig(retry_s=300), registry)
    try:
        with anyio.fail_after(10):
            assert not await shared.ping() and shared.up is False
            with run_redis(tmp_path / "redis", port):
                assert await shared.ping()
                assert await shared.call("cache_set", lambda r: r.set("k", b"v")) is True  # no longer skipped
    finally:
        await shared.aclose()
    assert shared.up is True and shared.error is None
    assert registry.get_sample_value("model_gateway_shared_state_up") == 1


async def test_an_answer_is_timed_by_operation(redis_url: str) -> None:
    registry = CollectorRegistry()
    shared = SharedState(SecretStr(redis_url), SharedStateConfig(deadline_ms=5000), registry)
    try:
        with anyio.fail_after(10):
            assert await shared.call("cache_get", lambda r: r.get("absent-key")) is None
    finally:
        await shared.aclose()
    count = "model_gateway_shared_state_call_duration_seconds_count"
    assert registry.get_sample_value(count, {"operation": "cache_get"}) == 1


def test_a_url_redis_cannot_parse_is_a_config_error_without_credentials() -> None:
    with pytest.raises(ConfigError) as raised:
        SharedState(SecretStr("http://user:s3cret@host:1/0"), SharedStateConfig(), CollectorRegistry())
    assert "s3cret" not in str(raised.value) and "http://host:1/0" in str(raised.value)
