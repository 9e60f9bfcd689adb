"""The gateway: one MCP server and the one owner of its AppState, whatever the transport.

`Gateway.running()` is the only place AppState is opened and closed. The
transport's entry point holds it for the life of the process: `serve_stdio`
(server/stdio/serve.py), the HTTP app's lifespan (server/http_edge.py), or, when the SDK
drives the server by itself (the in-memory `Client(server)`), the MCP
lifespan. Everything else that runs meanwhile (each MCP connection's
lifespan, legacy SSE connections, /health, /metrics, the resources) shares
the state that holder opened and never builds one.

Nothing slow runs before the first `tools/list`: adapters are constructed
(cheap, no I/O), the cached discovery snapshot is read, and probing, model
loading and revalidation start in the background.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError

from adapters.base import Adapter
from server import __version__
from server.client_logs import register_log_handlers
from server.config import Settings
from server.health import health_report
from server.privacy import privacy_view
from server.session import SessionLimits, SessionTable
from server.state import AppState, open_state
from server.toolkit import GatewayTool
from server.tools import tool_list

INSTRUCTIONS = (
    "Model tools served by a local-first gateway: `embed` turns texts into vectors, `rerank` orders documents "
    "by relevance to a query, `chat` generates a reply. Call `models` to see what is routable. Batch texts "
    "into one `embed` call instead of one call per text."
)


class Gateway:
    """Settings, the MCP server, and while it runs the AppState every transport reads."""

    def __init__(self, settings: Settings, adapters: Mapping[str, Adapter] | None = None) -> None:
        """`adapters` replaces the ones the manifests describe (tests inject fakes through this seam)."""
        self.settings = settings
        self._adapters = adapters
        self._state: AppState | None = None
        # the HTTP transports' sessions (server/session_guard.py); health reads it, stdio leaves it empty
        self.sessions = SessionTable(SessionLimits.from_config(settings.manifests.performance.http_server))
        tools = tool_list(settings.manifests.performance.limits)
        self.shed_tools = frozenset(tool.name for tool in tools if tool.sheds)  # answered busy at max_in_flight
        self.server = self._build_server(tools)

    @property
    def state(self) -> AppState | None:
        """The running state, or None before it opens and after it closes."""
        return self._state

    def get(self) -> AppState:
        if self._state is None:
            raise ResourceError("gateway is starting")
        return self._state

    @asynccontextmanager
    async def running(self) -> AsyncIterator[AppState]:
        """Open the state and hold it; entered again while it is held, share it (its holder outlives the sharers)."""
        if self._state is not None:
            yield self._state
            return
        async with open_state(self.settings, self._adapters) as state:
            self._state = state
            try:
                yield state
            finally:
                self._state = None

    def _build_server(self, tools: list[GatewayTool]) -> MCPServer[AppState]:
        server: MCPServer[AppState] = MCPServer(
            "model-gateway",
            title="brAInwav Model Gateway",
            version=__version__,
            instructions=INSTRUCTIONS,
            lifespan=lambda _: self.running(),
            log_level=self.settings.log_level,  # type: ignore[arg-type]
            tools=list(tools),
        )
        register_log_handlers(server)
        self._register_resources(server)
        return server

    def _register_resources(self, server: MCPServer[AppState]) -> None:
        @server.resource("gateway://health", mime_type="application/json")
        async def health() -> str:
            """Per-adapter status, last probe, latency, error, breaker state and snapshot age."""
            return json.dumps(health_report(self.get(), self.sessions), separators=(",", ":"))

        @server.resource("gateway://privacy", mime_type="application/json")
        async def privacy() -> str:
            """Privacy mode: the operator's, or over stdio the one session's; and which adapters are local."""
            state = self.get()
            on = state.privacy_mode or (state.settings.transport == "stdio" and state.local_session.privacy)
            return json.dumps(privacy_view(state, on).model_dump(), separators=(",", ":"))


def build_server(settings: Settings, adapters: Mapping[str, Adapter] | None = None) -> MCPServer[AppState]:
    """The MCP server of a new gateway, holding its own state while the SDK runs it."""
    return Gateway(settings, adapters).server
