"""One owner of the state: Gateway.running() opens it once; whoever enters it again shares it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client
from mcp.server.mcpserver.exceptions import ResourceError

from server.app import Gateway, build_server
from tests.support.fakes import FakeAdapter
from tests.support.gateway import settings_for

pytestmark = pytest.mark.anyio


async def test_entering_a_running_gateway_again_shares_its_state_and_leaves_it_open(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    gw = Gateway(settings_for(tmp_path), {"a": adapter})
    with pytest.raises(ResourceError, match="starting"):
        gw.get()
    async with gw.running() as outer:
        async with gw.running() as inner:
            assert inner is outer
        assert gw.get() is outer and adapter.closed == 0
    assert gw.state is None and adapter.closed == 1


async def test_when_the_sdk_drives_the_server_alone_its_lifespan_holds_the_state(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    server = build_server(settings_for(tmp_path, routes={"routes": {"embed": ["a/m"]}}), {"a": adapter})
    async with Client(server) as client:
        result = await client.call_tool("embed", {"input": "x"})
    assert not result.is_error and adapter.closed == 1


async def test_a_transport_holding_the_state_keeps_it_across_mcp_connections(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    gw = Gateway(settings_for(tmp_path, routes={"routes": {"embed": ["a/m"]}}), {"a": adapter})
    async with gw.running() as state:
        for text in ("x", "y"):  # two texts: a repeated one would be answered from the response cache
            async with Client(gw.server, mode="legacy") as client:
                assert not (await client.call_tool("embed", {"input": text})).is_error
            assert gw.get() is state and adapter.closed == 0
    assert adapter.closed == 1 and adapter.calls == [("embed", 1), ("embed", 1)]
