"""Rate-limit buckets in a real redis-server: all or none, refill on Redis's clock, exact across clients.

And what a call gets when Redis is gone or hangs: the operator's choice, within the deadline.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from server.errors import LimitError, RateLimitedError, SharedStateUnavailableError
from server.manifests import RateLimitConfig, SharedStateConfig
from server.shared_limits import RedisRateLimiter, bucket_key
from server.shared_state import SharedState
from tests.support.processes import free_port
from tests.support.redis_server import MISSING, redis_server, run_redis, silent_listener

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def limiter_on(
    url: str, rules: list[dict[str, Any]], registry: CollectorRegistry | None = None, **shared: Any
) -> AsyncIterator[RedisRateLimiter]:
    """A limiter as one replica builds it, with its own connection pool and a key prefix of its own test."""
    # a generous deadline unless a test is about deadlines: the machine running the tests may be busy
    cfg = SharedStateConfig.model_validate({"key_prefix": f"t{uuid.uuid4().hex[:12]}:", "deadline_ms": 5000, **shared})
    state = SharedState(SecretStr(url), cfg, registry or CollectorRegistry())
    try:
        yield RedisRateLimiter(RateLimitConfig.model_validate({"rules": rules}), state, cfg)
    finally:
        await state.aclose()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_call_takes_from_every_matching_bucket_or_from_none(redis_url: str) -> None:
    rules = [
        {"id": "texts", "unit": "texts", "rate_per_s": 0.001, "burst": 100},
        {"id": "calls", "rate_per_s": 0.001, "burst": 2},
    ]
    async with limiter_on(redis_url, rules) as rl:
        await rl.acquire("alice", "embed", {"texts": 60})
        with pytest.raises(RateLimitedError, match="'texts' reached for alice on embed"):
            await rl.acquire("alice", "embed", {"texts": 60})
        await rl.acquire("alice", "embed", {"texts": 40})  # the refused call took nothing from 'calls'
        with pytest.raises(RateLimitedError, match=r"'calls' reached .* retry in \d+\.\d\d s") as err:
            await rl.acquire("alice", "embed", {"texts": 0})  # ... and this one nothing from 'texts'
        assert err.value.retryable
        tokens = await rl.shared.client.hget(bucket_key(rl.prefix, "texts", "alice", "embed"), "tokens")
        assert float(tokens) == pytest.approx(0.0, abs=0.01)
        await rl.acquire("bob", "embed", {"texts": 100})  # buckets are per principal


async def test_a_call_bigger_than_a_bucket_is_refused_before_redis_is_asked(redis_url: str) -> None:
    async with limiter_on(redis_url, [{"id": "chars", "unit": "chars", "rate_per_s": 10, "burst": 1000}]) as rl:
        with pytest.raises(LimitError, match="more than the 1000 allowed at once") as err:
            await rl.acquire("alice", "embed", {"chars": 5000})
        assert not isinstance(err.value, RateLimitedError)
        assert await rl.shared.client.dbsize() >= 0 and rl.shared.up is None  # never contacted


async def test_buckets_refill_by_redis_time_and_expire_once_full(redis_url: str) -> None:
    async with limiter_on(redis_url, [{"id": "c", "rate_per_s": 2, "burst": 3}]) as rl:
        for _ in range(3):
            await rl.acquire("alice", "chat", {})
        with pytest.raises(RateLimitedError, match=r"retry in 0\.[45]\d s"):
            await rl.acquire("alice", "chat", {})
        key = bucket_key(rl.prefix, "c", "alice", "chat")
        assert 0 < await rl.shared.client.pttl(key) <= 3 * 500 + 1000  # gone once it would be full again
        seconds, micros = await rl.shared.client.time()
        # as if one second had passed on Redis's clock: two tokens back, no more
        await rl.shared.client.hset(key, "stamp", f"{seconds + micros / 1e6 - 1.0:.6f}")
        await rl.acquire("alice", "chat", {})
        await rl.acquire("alice", "chat", {})
        with pytest.raises(RateLimitedError):
            await rl.acquire("alice", "chat", {})


async def test_replicas_racing_for_one_quota_admit_exactly_its_burst(redis_url: str) -> None:
    rules = [{"id": "burst", "principal": "team-*", "rate_per_s": 0.001, "burst": 10}]
    admitted, refused = 0, 0
    async with limiter_on(redis_url, rules) as first:
        cfg = SharedStateConfig(key_prefix=first.prefix, deadline_ms=5000)
        others = [SharedState(SecretStr(redis_url), cfg, CollectorRegistry()) for _ in range(3)]
        replicas = [first, *(RedisRateLimiter(first.config, s, cfg) for s in others)]

        async def call(rl: RedisRateLimiter) -> None:
            nonlocal admitted, refused
            try:
                await rl.acquire("team-a", "embed", {})
                admitted += 1
            except RateLimitedError:
                refused += 1

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(call, replicas[i % 4])
        for s in others:
            await s.aclose()
    assert (admitted, refused) == (10, 30)


async def test_foreign_bytes_under_a_bucket_key_count_as_a_full_bucket(redis_url: str) -> None:
    async with limiter_on(redis_url, [{"id": "c", "rate_per_s": 0.001, "burst": 2}]) as rl:
        key = bucket_key(rl.prefix, "c", "alice", "embed")
        await rl.shared.client.set(key, b"\xff not a bucket")
        await rl.acquire("alice", "embed", {})
        await rl.shared.client.hset(key, mapping={"tokens": "nan", "stamp": "yesterday"})
        await rl.acquire("alice", "embed", {})
        await rl.acquire("alice", "embed", {})
        with pytest.raises(RateLimitedError):
            await rl.acquire("alice", "embed", {})


@pytest.mark.parametrize("choice", ["closed", "open", "local"])
async def test_redis_down_gives_the_configured_choice_and_says_so(choice: str) -> None:
    registry = CollectorRegistry()
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    rules = [{"id": "c", "rate_per_s": 0.001, "burst": 1}]
    async with limiter_on(url, rules, registry, on_unavailable=choice) as rl:
        with anyio.fail_after(5):
            outcomes = []
            for _ in range(2):
                try:
                    await rl.acquire("alice", "embed", {})
                    outcomes.append("admitted")
                except SharedStateUnavailableError as exc:
                    assert exc.retryable and "retry shortly" in exc.message
                    outcomes.append("refused")
                except RateLimitedError:
                    outcomes.append("limited")
        health = rl.shared.health()
    expected = {"closed": ["refused", "refused"], "open": ["admitted", "admitted"], "local": ["admitted", "limited"]}
    assert outcomes == expected[choice]
    assert health["up"] is False and health["on_unavailable"] == choice and "ConnectionError" in health["error"]
    assert sample(registry, "model_gateway_shared_state_up") == 0
    assert sample(registry, "model_gateway_shared_state_errors_total", operation="ratelimit", error="connection") == 1
    # the second call did not wait on Redis again: it was skipped until retry_s passes
    assert sample(registry, "model_gateway_shared_state_errors_total", operation="ratelimit", error="skipped") == 1
    assert sample(registry, "model_gateway_shared_state_fallbacks_total", choice=choice) == 2


async def test_a_hung_redis_costs_a_call_its_deadline_not_more() -> None:
    registry = CollectorRegistry()
    with silent_listener() as url:
        async with limiter_on(url, [{"id": "c", "rate_per_s": 1, "burst": 1}], registry, deadline_ms=100) as rl:
            with anyio.fail_after(5), pytest.raises(SharedStateUnavailableError):
                await rl.acquire("alice", "embed", {})
            assert rl.shared.error == "no answer within 100 ms"
    assert sample(registry, "model_gateway_shared_state_errors_total", operation="ratelimit", error="timeout") == 1


async def test_the_probe_sees_redis_come_back_and_calls_use_it_again(tmp_path: Path) -> None:
    if redis_server() is None:
        pytest.skip(MISSING)
    port = free_port()
    rules = [{"id": "c", "rate_per_s": 0.001, "burst": 1}]
    async with limiter_on(f"redis://127.0.0.1:{port}/0", rules, retry_s=300) as rl:
        with pytest.raises(SharedStateUnavailableError):
            await rl.acquire("alice", "embed", {})
        with run_redis(tmp_path / "redis", port):
            assert await rl.shared.ping()
            await rl.acquire("alice", "embed", {})  # not skipped for the rest of retry_s
            with pytest.raises(RateLimitedError):
                await rl.acquire("alice", "embed", {})
        assert rl.shared.up is True
