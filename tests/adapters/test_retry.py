"""The one retry policy: only what the upstream scheduled, and never past the caller's deadline."""

from __future__ import annotations

import anyio
import pytest

from adapters._retry import NO_RETRY, RetryPolicy
from adapters.errors import AdapterError, AdapterTimeoutError, AdapterUnavailableError, UpstreamStatusError

pytestmark = pytest.mark.anyio


async def tries_until_done(policy: RetryPolicy, errors: list[AdapterError]) -> tuple[int, AdapterError | None]:
    """Run `policy` over an attempt that raises `errors` in turn, then succeeds; (attempts made, error raised)."""
    made = 0

    async def attempt() -> str:
        nonlocal made
        made += 1
        if made <= len(errors):
            raise errors[made - 1]
        return "ok"

    try:
        await policy.run(attempt)
    except AdapterError as exc:
        return made, exc
    return made, None


async def test_a_scheduled_retry_is_honoured_at_most_twice() -> None:
    busy = UpstreamStatusError(503, "busy", retry_after_s=0.0)
    assert await tries_until_done(RetryPolicy(), [busy]) == (2, None)
    made, raised = await tries_until_done(RetryPolicy(), [busy, busy, busy])
    assert made == 3 and raised is busy


@pytest.mark.parametrize(
    "error",
    [
        UpstreamStatusError(500, "no schedule"),
        UpstreamStatusError(400, "bad request", retry_after_s=0.0),
        AdapterUnavailableError("refused"),
        AdapterTimeoutError("timed out"),
        AdapterError("anything else", retryable=True),
    ],
)
async def test_everything_the_upstream_did_not_schedule_goes_to_the_router_at_once(error: AdapterError) -> None:
    assert await tries_until_done(RetryPolicy(), [error]) == (1, error)


async def test_a_wait_that_would_outlive_the_deadline_or_the_cap_is_not_started() -> None:
    later = UpstreamStatusError(429, "slow down", retry_after_s=5.0)
    with anyio.fail_after(2):
        assert await tries_until_done(RetryPolicy(), [later]) == (1, later)
    assert await tries_until_done(RetryPolicy(max_wait_s=1.0), [later]) == (1, later)


async def test_no_retry_policy_never_retries() -> None:
    busy = UpstreamStatusError(503, "busy", retry_after_s=0.0)
    assert await tries_until_done(NO_RETRY, [busy]) == (1, busy)
