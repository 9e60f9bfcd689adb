"""What open_state() builds for limits and the cache: in the process by default, in Redis with shared state."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from server.ratelimit import RateLimiter
from server.response_cache import LocalStore, RedisStore
from server.shared_limits import RedisRateLimiter
from server.state import open_state
from tests.support.fakes import FakeAdapter
from tests.support.gateway import settings_for

pytestmark = pytest.mark.anyio
PROBES = "model_gateway_shared_state_call_duration_seconds_count"


async def test_without_shared_state_limits_and_cache_live_in_the_process(tmp_path: Path) -> None:
    async with open_state(settings_for(tmp_path), {"a": FakeAdapter("a")}) as state:
        assert isinstance(state.limiter, RateLimiter) and isinstance(state.response_cache.store, LocalStore)
        assert state.shared_state is None


async def test_with_shared_state_the_probe_runs_in_the_states_task_group_and_ends_with_it(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    perf = {"shared_state": {"url": redis_url, "probe_interval_s": 0.05, "deadline_ms": 5000}}
    with anyio.fail_after(10):
        async with open_state(settings_for(tmp_path, performance=perf), {"a": FakeAdapter("a")}) as state:
            shared = state.shared_state
            assert shared is not None
            assert isinstance(state.limiter, RedisRateLimiter) and isinstance(state.response_cache.store, RedisStore)
            probed, pings, ping = anyio.Event(), [0], shared.ping

            async def counted() -> bool:
                answered = await ping()
                pings[0] += 1
                if pings[0] >= 2:
                    probed.set()
                return answered

            monkeypatch.setattr(shared, "ping", counted)  # the probe's next rounds go through this
            await probed.wait()  # no call made: only the probe pings
            assert shared.up is True
            assert (state.metrics.registry.get_sample_value(PROBES, {"operation": "probe"}) or 0) >= 2
    # the probe loops forever: the state closing within the deadline is its task group cancelling it
