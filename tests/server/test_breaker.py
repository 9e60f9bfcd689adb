"""The circuit breaker alone, and its recovery paths through the real router."""

from __future__ import annotations

import anyio
import pytest

from adapters.errors import AdapterUnavailableError
from server.breaker import Breaker
from server.calls import Caller, EmbedCall
from server.discovery import Discovery
from server.manifests import BreakerConfig, DiscoveryConfig, RoutesManifest
from server.router import Attempt, Router
from tests.support.fakes import FakeAdapter

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_half_open_allows_a_single_trial() -> None:
    clock = Clock()
    br = Breaker(BreakerConfig(failure_threshold=1, cooldown_s=10), clock=clock)
    br.record(ok=False)
    assert br.state == "open" and br.blocking and br.allow() is False
    clock.now += 10  # the cool-down has passed
    assert br.allow() is True and br.state == "half_open"
    assert br.allow() is False
    br.record(ok=False)
    assert br.state == "open" and br.blocking


def test_an_abandoned_trial_lets_the_next_call_be_the_trial() -> None:
    clock = Clock()
    br = Breaker(BreakerConfig(failure_threshold=1, cooldown_s=10), clock=clock)
    br.record(ok=False)
    clock.now += 10
    assert br.allow() is True
    br.abandon()
    assert br.state == "half_open" and br.allow() is True and br.allow() is False


async def two_adapter_router(clock: Clock) -> tuple[Router, FakeAdapter, FakeAdapter]:
    a, b = FakeAdapter("a"), FakeAdapter("b")
    adapters = {"a": a, "b": b}
    discovery = Discovery(adapters, DiscoveryConfig(probe_deadline_s=1))
    await discovery.refresh()
    breakers = {n: Breaker(BreakerConfig(failure_threshold=1, cooldown_s=10), clock=clock) for n in adapters}
    routes = RoutesManifest.model_validate({"routes": {"embed": ["a", "b"]}})
    return Router(adapters, routes, discovery, breakers), a, b


async def embed(router: Router, deadline_s: float = 5.0) -> tuple[str, list[Attempt]]:
    attempts: list[Attempt] = []
    candidates, _ = router.usable("embed", router.resolve("embed", None))
    _, chosen = await router.execute(EmbedCall(Caller("tester"), ("x",)), candidates, deadline_s, attempts)
    return chosen.adapter, attempts


async def test_a_half_open_trial_whose_caller_left_does_not_shut_a_healed_backend_out() -> None:
    clock = Clock()
    router, a, _ = await two_adapter_router(clock)
    a.fail_with = lambda: AdapterUnavailableError("down")
    assert (await embed(router))[0] == "b" and router.breakers["a"].state == "open"
    clock.now += 10
    a.fail_with, a.delay_s = None, 30  # healed, but slow for the trial call, whose client gives up
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(embed, router)
            await a.entered.wait()
            tg.cancel_scope.cancel()
    a.delay_s = 0
    served, attempts = await embed(router)
    assert served == "a" and attempts[0].outcome == "ok" and router.breakers["a"].state == "closed"


async def test_a_half_open_trial_cut_by_its_deadline_opens_the_breaker_for_another_cool_down() -> None:
    clock = Clock()
    router, a, _ = await two_adapter_router(clock)
    a.fail_with = lambda: AdapterUnavailableError("down")
    await embed(router)
    clock.now += 10
    a.fail_with, a.delay_s = None, 30
    with anyio.fail_after(5):
        served, attempts = await embed(router, deadline_s=0.05)
    assert served == "b" and "timed out" in (attempts[0].error or "") and router.breakers["a"].state == "open"
    clock.now += 10
    a.delay_s = 0
    assert (await embed(router))[0] == "a" and router.breakers["a"].state == "closed"
