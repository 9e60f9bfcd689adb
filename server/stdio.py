"""stdio transport: stdout carries JSON-RPC only; the process ends when stdin closes.

With `--metrics-port`, /metrics and /health are also served on 127.0.0.1.
"""

from __future__ import annotations

import anyio
from starlette.applications import Starlette

from server.app import build_server, gateway_state, ops_routes
from server.config import Settings
from server.health import StateRef


async def serve_stdio(settings: Settings) -> None:
    ref = StateRef()
    server = build_server(settings, ref)
    if settings.metrics_port is None:
        await server.run_stdio_async()
        return
    import uvicorn

    app = Starlette(routes=ops_routes(ref))
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.metrics_port, log_level="warning", lifespan="off")
    metrics_server = uvicorn.Server(config)
    async with gateway_state(settings) as state:
        ref.state = state
        async with anyio.create_task_group() as tg:
            tg.start_soon(metrics_server.serve)
            await server.run_stdio_async()
            metrics_server.should_exit = True
