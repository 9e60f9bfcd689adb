"""Serve the gateway over stdio: build it (in the fast start's worker thread), then run one session.

stdout carries JSON-RPC only; the process ends when the client closes its end or on
SIGTERM/SIGINT, in both cases after the requests in flight finish (see `session`). With
`--metrics-port`, /metrics and /health are also served on 127.0.0.1 (behind the same Host/Origin
check and header deadline as the HTTP transports).

The serve function holds the gateway's state (`Gateway.running()`) for the life of the process.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping

import anyio

from server.app import Gateway
from server.config import Settings
from server.loopwatch import wanted
from server.stdio.front import Handover, Pipes, Serve, line_cap
from server.stdio.session import Session, StdioOptions

DEFAULT_GRACE_S = 10.0


def prepare_stdio(settings: Settings, env: Mapping[str, str], grace_s: float = DEFAULT_GRACE_S) -> Serve:
    """Build the gateway now; the returned function serves it over the claimed descriptors."""
    gateway = Gateway(settings)
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
        anyio.run(serve_stdio, gateway, Session(handover, pipes, options))
        return 0

    return serve


async def serve_stdio(gateway: Gateway, session: Session) -> None:
    """Hold the gateway's state for the process, serve the one client, and the metrics listener if asked."""
    async with gateway.running():
        port = gateway.settings.metrics_port
        if port is None:
            await session.run(gateway.server)
            return
        import uvicorn

        from server.http_edge import ops_app
        from server.http_server import uvicorn_config

        metrics_server = uvicorn.Server(uvicorn_config(gateway.settings, ops_app(gateway), port=port, lifespan=False))
        async with anyio.create_task_group() as tg:
            tg.start_soon(metrics_server.serve)
            await session.run(gateway.server)
            metrics_server.should_exit = True
