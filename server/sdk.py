"""The MCP SDK's private parts the gateway cannot do without, in one place.

Each one is a documented gap in the SDK's public surface (2.3.x):

- the low-level `Server` behind `MCPServer` (no public accessor): the stdio
  transport runs it over the gateway's own line reader and writer,
  `logging/setLevel` is re-provided on it (where the SDK documents doing so),
  and `notifications/initialized` is observed there (a session's log channel);
- the subscription bus behind `MCPServer` (no public accessor): where the
  stdio session publishes 2026-era list changes when a fast-start answer
  turns out stale;
- the per-connection `Connection` behind a request's `ServerSession` (the
  low-level request context exposes no `connection`): its standalone channel
  is where a session's log notifications go (server/client_logs.py).

Everything else the gateway reads from the SDK is public. When an SDK release
moves one of these, the accessors below raise `SDKChangedError` naming what
moved, and tests/server/test_sdk.py fails before anything else does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from pydantic import BaseModel

P = TypeVar("P", bound=BaseModel)


class SDKChangedError(RuntimeError):
    """The installed MCP SDK no longer has a private part the gateway relies on."""


def lowlevel(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server an MCPServer drives."""
    found = getattr(server, "_lowlevel_server", None)
    if not isinstance(found, Server):
        raise SDKChangedError("MCPServer._lowlevel_server is gone: update server/sdk.py for this MCP SDK")
    return found


async def run_streams(
    server: MCPServer[Any],
    read_stream: ReadStream[SessionMessage | Exception],
    write_stream: WriteStream[SessionMessage],
) -> None:
    """Serve one connection over ready streams: `MCPServer.run_stdio_async()` minus the SDK's own stdio files."""
    low = lowlevel(server)
    await low.run(read_stream, write_stream, low.create_initialization_options())


def subscriptions(server: MCPServer[Any]) -> SubscriptionBus:
    """The bus 2026-era clients receive list-change events from."""
    found = getattr(server, "_subscriptions", None)
    if not callable(getattr(found, "publish", None)):  # a Protocol: checked by what it must do
        raise SDKChangedError("MCPServer._subscriptions is gone: update server/sdk.py for this MCP SDK")
    return cast(SubscriptionBus, found)


def add_request_handler(
    server: MCPServer[Any],
    method: str,
    params_type: type[P],
    handler: Callable[[ServerRequestContext[Any, Any], P], Awaitable[BaseModel]],
) -> None:
    """Register (or replace) a JSON-RPC request handler on the low-level server."""
    lowlevel(server).add_request_handler(method, params_type, handler)


def add_notification_handler(
    server: MCPServer[Any],
    method: str,
    params_type: type[P],
    handler: Callable[[ServerRequestContext[Any, Any], P], Awaitable[None]],
) -> None:
    """Register (or replace) a JSON-RPC notification handler on the low-level server.

    A handler for `notifications/initialized` runs once the SDK has marked the connection initialized.
    """
    lowlevel(server).add_notification_handler(method, params_type, handler)


def connection_of(ctx: ServerRequestContext[Any, Any]) -> Connection:
    """The connection a request arrived on (per client on stdio, SSE and stateful HTTP; per request otherwise)."""
    found = getattr(ctx.session, "_connection", None)
    if not isinstance(found, Connection):
        raise SDKChangedError("ServerSession._connection is gone: update server/sdk.py for this MCP SDK")
    return found
