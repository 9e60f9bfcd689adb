"""What `models`, gateway://health and GET /health report."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.health import health_report, models_listing
from server.state import open_state
from tests.support.fakes import FakeAdapter
from tests.support.gateway import settings_for

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
