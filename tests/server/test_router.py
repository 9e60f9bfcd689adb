from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from adapters.base import ProbeResult
from adapters.errors import AdapterError, AdapterUnavailableError, InvalidRequestError, UpstreamStatusError
from server.breaker import Breaker
from server.calls import Caller, EmbedCall
from server.discovery import Discovery, Snapshot, fingerprint, status_from_probe, write_cached_snapshot
from server.errors import AllCandidatesFailedError, NoRouteError, UpstreamRejectedError
from server.manifests import BreakerConfig, DiscoveryConfig, RoutesManifest
from server.redact import Redactor
from server.router import Attempt, AttemptRules, Router
from tests.support.fakes import FakeAdapter

pytestmark = pytest.mark.anyio


async def make_router(
    adapters: dict[str, FakeAdapter], routes: dict | None = None, threshold: int = 3, rules: AttemptRules | None = None
) -> Router:
    discovery = Discovery(adapters, DiscoveryConfig(probe_deadline_s=1))
    await discovery.refresh()
    breakers = {n: Breaker(BreakerConfig(failure_threshold=threshold, cooldown_s=0.05)) for n in adapters}
    return Router(
        adapters, RoutesManifest.model_validate(routes or {}), discovery, breakers, None, rules or AttemptRules()
    )


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


async def test_an_adapters_default_model_is_one_its_server_lists_when_it_lists_any() -> None:
    a = FakeAdapter("a", {"gone": {"embed"}, "here": {"embed"}})
    a.unlisted = ("gone",)
    router = await make_router({"a": a}, {"routes": {"embed": ["a"]}})
    assert [c.label for c in router.resolve("embed", None)] == ["a/here"]
    assert [c.label for c in router.resolve("embed", "a/gone")] == ["a/gone"]
    a.unlisted = ("gone", "here")  # none listed: the first declared one, and its server says what is wrong
    await router.discovery.refresh()
    assert [c.label for c in router.resolve("embed", None)] == ["a/gone"]


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
    router = await make_router({"a": a, "b": b}, {"routes": {"embed": ["a", "b"]}}, rules=AttemptRules(Redactor().text))
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


def test_routes_manifest_rejects_unknown_capability(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RoutesManifest.model_validate({"routes": {"dance": ["a"]}})


async def test_aliases_declared_in_an_adapter_manifest_route_to_their_model() -> None:
    a = FakeAdapter("a", {"all-minilm-l6-v2": {"embed"}})
    discovery = Discovery({"a": a}, DiscoveryConfig(probe_deadline_s=1))
    await discovery.refresh()
    router = Router({"a": a}, RoutesManifest(), discovery, {}, {"a": {"all-MiniLM-L6-v2": "all-minilm-l6-v2"}})
    assert [c.label for c in router.resolve("embed", "all-MiniLM-L6-v2")] == ["a/all-minilm-l6-v2"]


async def test_a_call_does_not_wait_on_an_adapter_whose_probe_has_not_answered_when_another_is_known_up(
    tmp_path: Path,
) -> None:
    slow, good = FakeAdapter("slow"), FakeAdapter("good")
    slow.delay_s = 30  # a backend that hangs, whose first probe has not answered yet
    up = status_from_probe(good, ProbeResult(ok=True, models=good.info.models), 1.0, fingerprint(good))
    cache = tmp_path / "snapshot.json"
    write_cached_snapshot(cache, Snapshot({"good": up}, time.time(), "probe"))
    adapters = {"slow": slow, "good": good}
    discovery = Discovery(adapters, DiscoveryConfig(), cache)
    assert discovery.load_cache() and discovery.snapshot.adapters["slow"].status == "unknown"
    routes = RoutesManifest.model_validate({"routes": {"embed": ["slow", "good"]}})
    router = Router(adapters, routes, discovery, {}, rules=AttemptRules(unprobed_s=0.05))
    attempts: list[Attempt] = []
    candidates, _ = router.usable("embed", router.resolve("embed", None))
    with anyio.fail_after(5):  # the call's own deadline is 30 s
        _, chosen = await router.execute(embed_call(), candidates, 30.0, attempts)
    assert chosen.adapter == "good" and attempts[0].error == "timed out after 0.05s"


async def test_provider_text_is_redacted_whole_before_it_is_cut_short() -> None:
    secret = "sk-live-0123456789abcdefghijklmnopqrstuvwxyz"
    a, b = FakeAdapter("a"), FakeAdapter("b")
    for adapter in (a, b):  # the key straddles the 300-character cut of route[].error
        adapter.fail_with = lambda: AdapterError("x" * 285 + f" key {secret} tail", retryable=True)
    router = await make_router({"a": a, "b": b}, {"routes": {"embed": ["a", "b"]}}, rules=AttemptRules(Redactor().text))
    with pytest.raises(AllCandidatesFailedError) as info:
        await embed_via(router)
    attempts: list[Attempt] = []
    candidates, _ = router.usable("embed", router.resolve("embed", None))
    with pytest.raises(AllCandidatesFailedError):
        await router.execute(embed_call(), candidates, 1.0, attempts)
    shown = str(info.value) + "".join(a.error or "" for a in attempts)
    assert "[redacte" in shown
    assert not any(secret[i : i + 6] in shown for i in range(len(secret) - 5))
