"""Token buckets per principal and tool: over the limit is a clear, retryable tool error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from server.errors import LimitError, RateLimitedError
from server.manifests import RateLimitConfig
from server.ratelimit import Limiter, RateLimiter
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server


def limiter(rules: list[dict[str, object]], now: list[float], **kw: object) -> RateLimiter:
    return RateLimiter(RateLimitConfig.model_validate({"rules": rules, **kw}), clock=lambda: now[0])


def test_a_bucket_allows_its_burst_then_refuses_until_it_refills() -> None:
    now = [0.0]
    rl = limiter([{"id": "calls", "tool": "embed", "rate_per_s": 2, "burst": 3}], now)
    for _ in range(3):
        rl.take("alice", "embed", {})
    with pytest.raises(RateLimitedError, match=r"'calls' reached for alice on embed .* retry in 0\.50 s") as err:
        rl.take("alice", "embed", {})
    assert err.value.retryable
    rl.take("bob", "embed", {})  # buckets are per principal
    rl.take("alice", "chat", {})  # and per tool: the rule does not match chat
    now[0] = 0.5
    rl.take("alice", "embed", {})


def test_quotas_count_units_and_a_refused_call_takes_from_no_bucket() -> None:
    now = [0.0]
    rules = [
        {"id": "texts", "principal": "a*", "unit": "texts", "rate_per_s": 10, "burst": 100},
        {"id": "calls", "rate_per_s": 1, "burst": 2},
    ]
    rl = limiter(rules, now)
    rl.take("alice", "embed", {"texts": 60})
    with pytest.raises(RateLimitedError, match="'texts'"):
        rl.take("alice", "embed", {"texts": 60})
    rl.take("alice", "embed", {"texts": 40})  # the refused call took nothing from 'calls'
    with pytest.raises(RateLimitedError, match="'calls'"):
        rl.take("alice", "embed", {"texts": 0})


def test_a_call_bigger_than_the_bucket_is_a_plain_limit_error() -> None:
    rl = limiter([{"id": "chars", "unit": "chars", "rate_per_s": 100, "burst": 1000}], [0.0])
    with pytest.raises(LimitError, match="more than the 1000 allowed at once; split") as err:
        rl.take("alice", "embed", {"chars": 5000})
    assert not isinstance(err.value, RateLimitedError)


@pytest.mark.anyio
async def test_the_in_process_limiter_is_a_limiter_whose_acquire_is_awaited() -> None:
    rl: Limiter = limiter([{"id": "calls", "rate_per_s": 0.001, "burst": 1}], [0.0])
    await rl.acquire("alice", "embed", {})
    with pytest.raises(RateLimitedError):
        await rl.acquire("alice", "embed", {})


def test_buckets_stay_bounded_under_many_principals() -> None:
    now = [0.0]
    rl = limiter([{"id": "c", "rate_per_s": 1, "burst": 5}], now, max_buckets=10)
    for i in range(100):
        rl.take(f"p{i}", "embed", {})
        now[0] += 0.01
    assert len(rl._buckets) <= 10


@pytest.mark.anyio
async def test_the_gateway_answers_over_limit_calls_with_a_retryable_tool_error(tmp_path: Path) -> None:
    perf = {"rate_limits": {"rules": [{"id": "embed-calls", "tool": "embed", "rate_per_s": 0.001, "burst": 2}]}}
    adapter = FakeAdapter("a")
    server, ref = fake_server(tmp_path, {"a": adapter}, routes={"routes": {"embed": ["a/m"]}}, performance=perf)
    async with Client(server) as c:
        results = [await c.call_tool("embed", {"input": [f"x{i}"]}) for i in range(3)]
        records = [json.loads(line) for line in ref.get().audit.path.read_text().splitlines()]
    assert [r.is_error for r in results] == [False, False, True]
    assert "rate limit 'embed-calls'" in results[2].content[0].text and "retry in" in results[2].content[0].text
    assert len(adapter.calls) == 2
    refused = [r for r in records if r["event"] == "deny"]
    assert len(refused) == 1 and refused[0]["rule"] == "rate_limited" and refused[0]["outcome"] == "limited"
