from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from adapters.errors import AdapterUnavailableError, InvalidRequestError, UpstreamStatusError
from server.breaker import Breaker
from server.calls import Caller, EmbedCall
from server.discovery import Discovery
from server.errors import AllCandidatesFailedError, NoRouteError, UpstreamRejectedError
from server.manifests import BreakerConfig, DiscoveryConfig, RoutesManifest
from server.router import Attempt, Router
from tests.support.fakes import FakeAdapter

pytestmark = pytest.mark.anyio


async def make_router(adapters: dict[str, FakeAdapter], routes: dict | None = None, threshold: int = 3) -> Router:
    discovery = Discovery(adapters, DiscoveryConfig(probe_deadline_s=1))
    await discovery.refresh()
    breakers = {n: Breaker(BreakerConfig(failure_threshold=threshold, cooldown_s=0.05)) for n in adapters}
    return Router(adapters, RoutesManifest.model_validate(routes or {}), discovery, breakers)


def embed_call(model: str | None = None, privacy: bool = False) -> EmbedCall:
    return EmbedCall(Caller("tester", privacy), ("x",), model)


async def embed_via(router: Router, model: str | None = None, privacy: bool = False) -> tuple[str, list[Attempt]]:
    attempts: list[Attempt] = []
    candidates, _ = router.usable("embed", router.resolve("embed", model), privacy)
    _, chosen = await router.execute(embed_call(model, privacy), candidates, 1.0, attempts)
    return chosen.adapter, attempts


async def test_names_resolve_as_adapter_slash_model_bare_model_alias_and_default_route() -> None:
    a = FakeAdapter("a", {"small": {"embed"}, "big": {"chat"}})
    b = FakeAdapter("b", {"small": {"embed"}})
    router = await make_router({"a": a, "b": b}, {"aliases": {"fast": ["b/small"]}, "routes": {"embed": ["b", "a"]}})
    assert [c.label for c in router.resolve("embed", "a/small")] == ["a/small"]
    assert [c.label for c in router.resolve("embed", "small")] == ["b/small", "a/small"]
    assert [c.label for c in router.resolve("embed", "fast")] == ["b/small"]
    assert [c.label for c in router.resolve("embed", None)] == ["b/small", "a/small"]


async def test_unknown_model_and_unknown_adapter_errors_name_what_exists() -> None:
    router = await make_router({"a": FakeAdapter("a", {"small": {"embed"}})})
    with pytest.raises(NoRouteError, match=r"model 'nope'.*available: a/small"):
        router.resolve("embed", "nope")
    with pytest.raises(NoRouteError, match=r"unknown adapter 'zz'.*adapters: a"):
        router.resolve("embed", "zz/small")


async def test_retryable_failure_falls_back_and_non_retryable_stops() -> None:
    a, b = FakeAdapter("a"), FakeAdapter("b")
    router = await make_router({"a": a, "b": b}, {"routes": {"embed": ["a", "b"]}})
    a.fail_with = lambda: AdapterUnavailableError("refused")
    served, attempts = await embed_via(router)
    assert served == "b" and [x.outcome for x in attempts] == ["failed", "ok"]
    a.fail_with = lambda: InvalidRequestError("input too long for this model")
    with pytest.raises(UpstreamRejectedError, match="input too long"):
        await embed_via(router)
    assert b.calls[-1] == ("embed", 1) and len(b.calls) == 1


async def test_when_every_candidate_fails_the_error_lists_each_and_why() -> None:
    a, b = FakeAdapter("a"), FakeAdapter("b")
    a.fail_with = lambda: UpstreamStatusError(503, "a is overloaded")
    b.fail_with = lambda: AdapterUnavailableError("b refused the connection")
    router = await make_router({"a": a, "b": b}, {"routes": {"embed": ["a", "b"]}})
    with pytest.raises(AllCandidatesFailedError) as info:
        await embed_via(router)
    assert "a/m: failed: a is overloaded" in str(info.value)
    assert "b/m: failed: b refused the connection" in str(info.value)


async def test_a_hanging_adapter_is_cut_at_the_attempt_deadline_and_the_next_one_serves() -> None:
    a, b = FakeAdapter("a"), FakeAdapter("b")
    a.delay_s = 30
    router = await make_router({"a": a, "b": b}, {"routes": {"embed": ["a", "b"]}})
    attempts: list[Attempt] = []
    candidates, _ = router.usable("embed", router.resolve("embed", None))
    with anyio.fail_after(5):
        _, chosen = await router.execute(embed_call(), candidates, 0.05, attempts)
    assert chosen.adapter == "b" and "timed out" in (attempts[0].error or "")


async def test_breaker_opens_after_consecutive_failures_then_lets_one_trial_through() -> None:
    a, b = FakeAdapter("a"), FakeAdapter("b")
    a.fail_with = lambda: AdapterUnavailableError("down")
    router = await make_router({"a": a, "b": b}, {"routes": {"embed": ["a", "b"]}}, threshold=2)
    for _ in range(2):
        await embed_via(router)
    assert router.breakers["a"].state == "open"
    calls_when_open = len(a.calls)
    _, attempts = await embed_via(router)
    assert len(a.calls) == calls_when_open  # an open breaker costs nothing per call
    assert attempts[0].outcome == "ok" and attempts[0].adapter == "b"
    await anyio.sleep(0.06)
    a.fail_with = None
    served, _ = await embed_via(router)
    assert served == "a" and router.breakers["a"].state == "closed"


async def test_privacy_mode_excludes_remote_adapters_without_rediscovery() -> None:
    local, remote = FakeAdapter("local"), FakeAdapter("cloud", privacy="remote")
    router = await make_router({"cloud": remote, "local": local}, {"routes": {"embed": ["cloud", "local"]}})
    probes = remote.probes
    served, _ = await embed_via(router, privacy=True)
    assert served == "local" and remote.calls == [] and remote.probes == probes
    _, skipped = router.usable("embed", router.resolve("embed", "cloud/m"), privacy=True)
    assert skipped[0].error == "excluded by privacy mode"


async def test_down_adapters_and_undeclared_capabilities_are_skipped_with_reasons() -> None:
    dead = FakeAdapter("dead", probe_ok=False)
    chat_only = FakeAdapter("talker", {"t": {"chat"}})
    ok = FakeAdapter("ok")
    router = await make_router(
        {"dead": dead, "talker": chat_only, "ok": ok}, {"routes": {"embed": ["dead/m", "talker/t", "ok/m"]}}
    )
    usable, skipped = router.usable("embed", router.resolve("embed", None))
    assert [c.adapter for c in usable] == ["ok"]
    reasons = {a.adapter: a.error for a in skipped}
    assert reasons["dead"].startswith("down") and "does not serve embed" in reasons["talker"]


def test_breaker_half_open_allows_a_single_trial() -> None:
    br = Breaker(BreakerConfig(failure_threshold=1, cooldown_s=0.001))
    br.record(ok=False)
    assert br.state == "open"
    br.opened_at -= 1  # the cool-down has passed
    assert br.allow() is True and br.state == "half_open"
    assert br.allow() is False
    br.record(ok=False)
    assert br.state == "open"


def test_routes_manifest_rejects_unknown_capability(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RoutesManifest.model_validate({"routes": {"dance": ["a"]}})


async def test_aliases_declared_in_an_adapter_manifest_route_to_their_model() -> None:
    a = FakeAdapter("a", {"all-minilm-l6-v2": {"embed"}})
    discovery = Discovery({"a": a}, DiscoveryConfig(probe_deadline_s=1))
    await discovery.refresh()
    router = Router({"a": a}, RoutesManifest(), discovery, {}, {"a": {"all-MiniLM-L6-v2": "all-minilm-l6-v2"}})
    assert [c.label for c in router.resolve("embed", "all-MiniLM-L6-v2")] == ["a/all-minilm-l6-v2"]
