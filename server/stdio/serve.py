"""stdio transport: stdout carries JSON-RPC only; the process ends when stdin closes.

The SDK's stdio transport runs over our own line reader and writer
(`server.stdio_wire`), fed by the fast start (`server.stdio_front`) with
whatever the client sent before the server was ready. With `--metrics-port`,
/metrics and /health are also served on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from starlette.applications import Starlette

from server.app import build_server, gateway_state, ops_routes
from server.config import Settings
from server.health import StateRef
from server.state import AppState
from server.stdio_front import Handover
from server.stdio_wire import LineReader, LineWriter


def prepare_stdio(settings: Settings) -> Callable[[Handover, int, int], int]:
    """Build the server now; the returned function serves it over the claimed descriptors."""
    ref = StateRef()
    server = build_server(settings, ref)

    def serve(handover: Handover, in_fd: int, out_fd: int) -> int:
        anyio.run(serve_stdio, settings, server, ref, handover, in_fd, out_fd)
        return 0

    return serve


async def serve_stdio(
    settings: Settings, server: MCPServer[AppState], ref: StateRef, handover: Handover, in_fd: int, out_fd: int
) -> None:
    reader = LineReader(in_fd, pending=handover.pending, replay=handover.replay, observe=handover.recorder.inbound)
    writer = LineWriter(out_fd, handover.recorder.outbound)
    if settings.metrics_port is None:
        await _run(server, reader, writer)
        return
    import uvicorn

    app = Starlette(routes=ops_routes(ref))
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.metrics_port, log_level="warning", lifespan="off")
    metrics_server = uvicorn.Server(config)
    async with gateway_state(settings) as state:
        ref.state = state
        async with anyio.create_task_group() as tg:
            tg.start_soon(metrics_server.serve)
            await _run(server, reader, writer)
            metrics_server.should_exit = True


async def _run(server: MCPServer[AppState], reader: LineReader, writer: LineWriter) -> None:
    """What `MCPServer.run_stdio_async()` does, over our reader and writer instead of the SDK's file wrappers."""
    async with stdio_server(cast(Any, reader), cast(Any, writer)) as (read_stream, write_stream):
        lowlevel = server._lowlevel_server
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
