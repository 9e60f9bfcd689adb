"""The MCP SDK's private parts the gateway uses are still where server/sdk.py expects them.

If one of these fails after an SDK upgrade, server/sdk.py is the only file to update.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import EmptyResult, NotificationParams, SetLevelRequestParams

from server import sdk

pytestmark = pytest.mark.anyio


def test_the_low_level_server_behind_an_mcpserver_is_reachable() -> None:
    server = MCPServer("probe")
    low = sdk.lowlevel(server)
    assert isinstance(low, Server)
    assert callable(low.run) and callable(low.create_initialization_options) and callable(low.add_request_handler)


def test_the_subscription_bus_behind_an_mcpserver_is_reachable() -> None:
    bus = sdk.subscriptions(MCPServer("probe"))
    assert callable(bus.publish)


def test_a_missing_private_part_raises_a_clear_error_naming_the_file_to_update() -> None:
    class NotAServer:
        pass

    with pytest.raises(sdk.SDKChangedError, match=r"server/sdk\.py"):
        sdk.lowlevel(NotAServer())  # type: ignore[arg-type]
    with pytest.raises(sdk.SDKChangedError, match=r"server/sdk\.py"):
        sdk.subscriptions(NotAServer())  # type: ignore[arg-type]


async def test_a_request_handler_added_on_the_low_level_server_answers() -> None:
    server = MCPServer("probe")
    seen: list[str] = []

    async def set_level(ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        seen.append(str(params.level))
        return EmptyResult()

    sdk.add_request_handler(server, "logging/setLevel", SetLevelRequestParams, set_level)
    async with Client(server, mode="legacy") as client:
        with pytest.warns(MCPDeprecationWarning):
            await client.set_logging_level("error")
    assert seen == ["error"]


async def test_a_notification_handler_added_on_the_low_level_server_sees_the_client_initialized() -> None:
    server = MCPServer("probe")
    seen: list[bool] = []

    async def initialized(ctx: Any, params: NotificationParams) -> None:
        seen.append(sdk.connection_of(ctx).initialized.is_set())

    sdk.add_notification_handler(server, "notifications/initialized", NotificationParams, initialized)
    async with Client(server, mode="legacy") as client:
        await client.list_tools()  # a round trip after the client's `initialized`
    assert seen == [True]


async def test_a_connection_and_its_state_persist_across_one_clients_requests() -> None:
    server: MCPServer = MCPServer("probe")

    @server.tool()
    async def count(ctx: Context) -> int:
        connection = sdk.connection_of(ctx.request_context)
        assert isinstance(connection, Connection)
        connection.state["n"] = connection.state.get("n", 0) + 1
        return int(connection.state["n"])

    async with Client(server, mode="legacy") as first, Client(server, mode="legacy") as second:
        counts = [(await first.call_tool("count", {})).structured_content for _ in range(3)]
        other = (await second.call_tool("count", {})).structured_content
    assert counts == [{"result": 1}, {"result": 2}, {"result": 3}] and other == {"result": 1}


async def test_streams_run_through_the_low_level_server_serve_a_client() -> None:
    from mcp.client.session import ClientSession
    from mcp.shared.memory import create_client_server_memory_streams

    server = MCPServer("probe")

    @server.tool()
    async def ping_back(text: str) -> str:
        return text

    async with (
        create_client_server_memory_streams() as (client_streams, server_streams),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(sdk.run_streams, server, *server_streams)
        async with ClientSession(*client_streams) as session:
            await session.initialize()
            result = await session.call_tool("ping_back", {"text": "hello"})
        tg.cancel_scope.cancel()
    assert result.structured_content == {"result": "hello"}
