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
from mcp.server.stdio import stdio_server

from server import sdk
from server.app import Gateway
from server.config import Settings
from server.stdio_front import Handover
from server.stdio_wire import LineReader, LineWriter


def prepare_stdio(settings: Settings) -> Callable[[Handover, int, int], int]:
    """Build the gateway now; the returned function serves it over the claimed descriptors."""
    gateway = Gateway(settings)

    def serve(handover: Handover, in_fd: int, out_fd: int) -> int:
        anyio.run(serve_stdio, gateway, handover, in_fd, out_fd)
        return 0

    return serve


async def serve_stdio(gateway: Gateway, handover: Handover, in_fd: int, out_fd: int) -> None:
    """Hold the gateway's state for the process, serve the one client, and the metrics listener if asked."""
    reader = LineReader(in_fd, pending=handover.pending, replay=handover.replay, observe=handover.recorder.inbound)
    writer = LineWriter(out_fd, handover.recorder.outbound)
    async with gateway.running():
        if gateway.settings.metrics_port is None:
            await _run(gateway, reader, writer)
            return
        import uvicorn

        from server.http_edge import ops_app

        port = gateway.settings.metrics_port
        config = uvicorn.Config(ops_app(gateway), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        metrics_server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(metrics_server.serve)
            await _run(gateway, reader, writer)
            metrics_server.should_exit = True


async def _run(gateway: Gateway, reader: LineReader, writer: LineWriter) -> None:
    """What `MCPServer.run_stdio_async()` does, over our reader and writer instead of the SDK's file wrappers."""
    async with stdio_server(cast(Any, reader), cast(Any, writer)) as (read_stream, write_stream):
        await sdk.run_streams(gateway.server, read_stream, write_stream)
