"""Serve the gateway over stdio: build it (in the fast start's worker thread), then run one session.

stdout carries JSON-RPC only; the process ends when the client closes its end or on
SIGTERM/SIGINT, in both cases after the requests in flight finish (see `session`). With
`--metrics-port`, /metrics and /health are also served on 127.0.0.1.

The application state is reached only through `build_server` and `gateway_state`.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping

import anyio
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette

from server.app import build_server, gateway_state, ops_routes
from server.config import Settings
from server.health import StateRef
from server.loopwatch import wanted
from server.state import AppState
from server.stdio.front import Handover, Pipes, Serve, line_cap
from server.stdio.session import Session, StdioOptions

DEFAULT_GRACE_S = 10.0


def prepare_stdio(settings: Settings, env: Mapping[str, str], grace_s: float = DEFAULT_GRACE_S) -> Serve:
    """Build the server now; the returned function serves it over the claimed descriptors."""
    ref = StateRef()
    server = build_server(settings, ref)
    options = StdioOptions(
        max_line_bytes=line_cap(env) or settings.manifests.performance.limits.max_line_bytes,
        grace_s=grace_s,
        loop_watch=wanted(env),
    )

    def serve(handover: Handover, pipes: Pipes) -> int:
        # What exists now (modules, classes, the SDK's schemas, the built server) lives as long as the
        # process: out of the collector's way, a full collection no longer walks it (~100 ms here)
        # while the event loop waits.
        gc.freeze()
        anyio.run(serve_stdio, settings, server, ref, Session(handover, pipes, options))
        return 0

    return serve


async def serve_stdio(settings: Settings, server: MCPServer[AppState], ref: StateRef, session: Session) -> None:
    if settings.metrics_port is None:
        await session.run(server)
        return
    import uvicorn

    app = Starlette(routes=ops_routes(ref))
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.metrics_port, log_level="warning", lifespan="off")
    metrics_server = uvicorn.Server(config)
    async with gateway_state(settings) as state:
        ref.state = state
        async with anyio.create_task_group() as tg:
            tg.start_soon(metrics_server.serve)
            await session.run(server)
            metrics_server.should_exit = True
