"""open_state(): what the state is built from, and that everything it opened is closed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from adapters.errors import AdapterError
from adapters.types import EmbedRequest
from server.batching import CoalescingAdapter
from server.config import Settings, load_settings
from server.state import open_state
from tests.support.downstream_mcp import alive, spawned, toy_vector
from tests.support.fakes import FakeAdapter
from tests.support.gateway import settings_for, write_manifests
from tests.support.processes import ROOT

pytestmark = pytest.mark.anyio


async def test_the_router_reaches_each_adapter_through_the_coalescer_and_discovery_probes_the_adapter(
    tmp_path: Path,
) -> None:
    adapter = FakeAdapter("a")
    async with open_state(settings_for(tmp_path), {"a": adapter}) as state:
        routed = state.router.adapters["a"]
        await state.discovery.refresh()
        assert isinstance(routed, CoalescingAdapter) and routed.inner is adapter and routed.info is adapter.info
        assert state.adapters["a"] is adapter and adapter.probes >= 1
        assert state.privacy_mode is False and state.in_flight == 0
    assert adapter.closed == 1 and state.audit.healthy


def downstream_settings(tmp_path: Path) -> Settings:
    """Settings whose manifests name one remote MCP adapter, `down`, run as the test downstream server."""
    manifests = write_manifests(tmp_path / "manifests")
    downstream = {
        "kind": "mcp",
        "name": "down",
        "command": [sys.executable, "-m", "tests.support.downstream_mcp"],
        "cwd": str(ROOT),
        "env": {"PYTHONPATH": str(ROOT), "DOWNSTREAM_SPAWN_LOG": str(tmp_path / "spawns")},
    }
    (manifests / "adapters" / "down.json").write_text(json.dumps(downstream))
    return load_settings(manifests_dir=manifests, env={"HOME": str(tmp_path), "MODEL_GATEWAY_AUDIT_KEY": "00" * 32})


async def test_an_adapter_built_from_the_manifests_runs_its_session_in_the_state_and_ends_with_it(
    tmp_path: Path,
) -> None:
    settings = downstream_settings(tmp_path)
    with anyio.fail_after(60):
        async with open_state(settings) as state:
            result = await state.adapters["down"].embed(EmbedRequest(model="embed", texts=("a",)))
            (pid,) = spawned(tmp_path / "spawns")
            assert list(result.vectors[0]) == toy_vector("a") and alive(pid)
    assert not alive(pid)


async def test_closing_the_state_cancels_a_remote_session_even_when_its_adapter_never_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closes: list[str] = []

    async def forgetful_close() -> None:  # an adapter that leaves its session running
        closes.append("called")

    settings = downstream_settings(tmp_path)
    with anyio.fail_after(60):
        async with open_state(settings) as state:
            adapter = state.adapters["down"]
            await adapter.embed(EmbedRequest(model="embed", texts=("a",)))
            (pid,) = spawned(tmp_path / "spawns")
            assert alive(pid)
            monkeypatch.setattr(adapter, "aclose", forgetful_close)
    assert closes == ["called"]  # the state did ask; the session ended because its owner task was cancelled
    assert not alive(pid)
    with anyio.fail_after(10):  # a cancelled session refuses calls instead of hanging on a dead client
        with pytest.raises(AdapterError):
            await adapter.embed(EmbedRequest(model="embed", texts=("b",)))
    assert spawned(tmp_path / "spawns") == [pid]  # and nothing outside the state opened a new one
