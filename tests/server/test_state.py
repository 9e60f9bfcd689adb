"""open_state(): what the state is built from, and that everything it opened is closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.batching import CoalescingAdapter
from server.state import open_state
from tests.support.fakes import FakeAdapter
from tests.support.gateway import settings_for

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
