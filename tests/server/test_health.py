"""What `models`, gateway://health and GET /health report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from adapters.base import AdapterContext, AdapterLimits
from adapters.errors import AdapterUnavailableError
from adapters.manifest import ModelSpec, OllamaManifest
from adapters.ollama import OllamaAdapter
from server.discovery import Discovery, read_cached_snapshot
from server.health import health_report, models_listing
from server.manifests import DiscoveryConfig
from server.state import open_state
from tests.support.fake_ollama import FakeOllama
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server, settings_for

pytestmark = pytest.mark.anyio


async def test_health_speaks_for_the_gateway_and_the_models_listing_for_its_caller(tmp_path: Path) -> None:
    adapters = {"cloud": FakeAdapter("cloud", privacy="remote"), "local": FakeAdapter("local", {"e": {"embed"}})}
    async with open_state(settings_for(tmp_path), adapters) as state:
        await state.discovery.refresh()
        report = health_report(state)
        open_listing = {m.name: m.routable for m in models_listing(state, privacy=False).models}
        private = models_listing(state, privacy=True)
    assert report["status"] == "ok" and report["privacy_mode"] is False and report["in_flight"] == 0
    assert report["capabilities"] == {"chat": True, "embed": True, "rerank": True}
    assert report["adapters"]["cloud"]["breaker"] == "closed" and report["adapters"]["local"]["models"] == ["e"]
    assert open_listing == {"cloud/m": True, "local/e": True}
    assert {m.name: m.routable for m in private.models} == {"cloud/m": False, "local/e": True}
    assert private.privacy_mode is True


async def test_health_shows_when_each_adapter_last_served_and_its_breaker_as_it_is_now(tmp_path: Path) -> None:
    a, b = FakeAdapter("a", {"e": {"embed"}}), FakeAdapter("b", {"e": {"embed"}})
    server, _ = fake_server(tmp_path, {"a": a, "b": b}, routes={"routes": {"embed": ["a", "b"]}})
    async with Client(server) as c:
        before = json.loads((await c.read_resource("gateway://health")).contents[0].text)["adapters"]
        assert not (await c.call_tool("embed", {"input": ["x"]})).is_error
        served = json.loads((await c.read_resource("gateway://health")).contents[0].text)["adapters"]
        a.fail_with = lambda: AdapterUnavailableError("connection refused")
        for text in ("p", "q", "r"):  # the default failure threshold; new texts, so none is a cache hit
            assert not (await c.call_tool("embed", {"input": [text]})).is_error
        after = json.loads((await c.read_resource("gateway://health")).contents[0].text)["adapters"]
    assert before["a"]["last_served"] is None and before["a"]["last_probe"] is not None
    assert served["a"]["last_served"] is not None and served["a"]["last_served_age_s"] >= 0
    assert served["a"]["model_states"] == {"e": {"state": "ready", "error": None}}
    assert after["a"]["breaker"] == "open" and after["a"]["breaker_retry_in_s"] > 0
    assert after["a"]["last_failed"] is not None and after["a"]["last_served"] == served["a"]["last_served"]
    assert after["b"]["breaker"] == "closed" and after["b"]["last_served"] is not None


async def test_models_of_an_adapter_whose_probe_failed_show_failed_with_the_reason(tmp_path: Path) -> None:
    adapters = {"a": FakeAdapter("a", {"e": {"embed"}}, probe_ok=False)}
    async with open_state(settings_for(tmp_path), adapters) as state:
        await state.discovery.refresh()
        report = health_report(state)
    assert report["adapters"]["a"]["model_states"] == {"e": {"state": "failed", "error": "refused"}}


async def test_every_declared_model_the_server_does_not_list_shows_failed_however_many_there_are(
    tmp_path: Path,
) -> None:
    # Enough long names that the probe's human-readable detail is cut short: health must not read it.
    absent = [f"a-model-that-was-never-pulled-{i:02d}:latest" for i in range(40)]
    models = [ModelSpec(name="all-minilm", capabilities=["embed"])]
    models += [ModelSpec(name=n, capabilities=["chat"]) for n in absent]
    with FakeOllama() as server:
        manifest = OllamaManifest(kind="ollama", name="o", endpoint=server.url, models=models)
        adapter = OllamaAdapter(manifest, AdapterContext(limits=AdapterLimits()))
        try:
            async with open_state(settings_for(tmp_path), {"o": adapter}) as state:
                snap = await state.discovery.refresh()
                report = health_report(state)
                disk = tmp_path / "again.json"
                await Discovery({"o": adapter}, DiscoveryConfig(), disk).refresh()
            reread = read_cached_snapshot(disk, {"o": adapter})
        finally:
            await adapter.aclose()
    assert len(snap.adapters["o"].details["missing_models"]) < len(", ".join(absent))
    states = report["adapters"]["o"]["model_states"]
    assert states["all-minilm:latest"] == {"state": "ready", "error": None}
    assert {n: s["state"] for n, s in states.items() if n != "all-minilm:latest"} == dict.fromkeys(absent, "failed")
    assert reread is not None and reread.adapters["o"].unlisted == frozenset(absent)
