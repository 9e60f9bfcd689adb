"""The HTTP edge: the ASGI app both HTTP transports serve, and `serve_http()`.

`http_app(gateway)` is the one composition point, outermost first:

    HostOriginGuard          every path: only the Host/Origin values the MCP transports accept
      BearerAuth             when tokens are configured: every path but /health needs one
        Edge                 lifespan: the gateway's state, the session sweeper, the SDK transport's own
          GET /health, /metrics
          RequestGuard       bounded bodies; each POSTed message parsed once and held to the envelope rules
            SessionGuard     a session answers only to the principal that opened it; caps, idle timeout
              BusyEdge       at max_in_flight, a model tool call over Streamable HTTP is answered busy here
                the SDK's Streamable HTTP app (/mcp) or legacy SSE app (/sse, /messages/)

Below ASGI, `server/http_server.py` bounds the time a client may take over its headers and
tells a request when its client has gone. stdio's `--metrics-port` listener (`ops_app`) is
the ops routes behind the same Host/Origin check.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.app import Gateway
from server.busy_edge import BusyEdge, BusyShape
from server.config import Settings
from server.health import health_report
from server.http_guard import HostOriginGuard, RequestGuard
from server.loopwatch import LoopWatch
from server.principal import SCOPE_KEY, token_digest
from server.sdk import lowlevel
from server.session_guard import SessionGuard
from server.telemetry import CONTENT_TYPE

Endpoint = Callable[[Request], Awaitable[Response]]
Task = Callable[[], Coroutine[Any, Any, None]]


def ops_routes(gateway: Gateway) -> list[Route]:
    """GET /health (503 when a capability cannot be served or the audit cannot write) and GET /metrics."""

    async def health(request: Request) -> Response:
        state = gateway.state
        if state is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        report = health_report(state, gateway.sessions)
        code = 200 if all(report["capabilities"].values()) and report["audit"]["ok"] else 503
        return JSONResponse(report, status_code=code)

    async def metrics(request: Request) -> Response:
        state = gateway.state
        if state is None:
            return Response(b"", media_type=CONTENT_TYPE)
        # gauges of what the state knows anyway are set when scraped, not on every call
        state.metrics.snapshot_age.set(state.discovery.snapshot.age_s())
        state.metrics.in_flight.set(state.in_flight)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    return [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]


def ops_app(gateway: Gateway) -> ASGIApp:
    """/health and /metrics alone, behind the Host/Origin check (stdio's `--metrics-port` listener)."""
    return HostOriginGuard(Starlette(routes=ops_routes(gateway)), transport_security(gateway.settings))


def transport_security(settings: Settings) -> TransportSecuritySettings:
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *settings.allowed_hosts]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    origins += [f"http://{h}" for h in settings.allowed_hosts] + [f"https://{h}" for h in settings.allowed_hosts]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class BearerAuth:
    """Requires `Authorization: Bearer <token>` on every path but /health; the token's subject is the principal."""

    def __init__(self, app: ASGIApp, subjects: Mapping[str, str]) -> None:
        self.app = app
        self._subjects = dict(subjects)  # sha256(token) -> subject; the tokens themselves are not kept

    def _subject(self, header: bytes) -> str | None:
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = token_digest(token.strip())
        for known, subject in self._subjects.items():
            if hmac.compare_digest(known, digest):
                return subject
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") != "/health":
            subject = self._subject(dict(scope.get("headers") or []).get(b"authorization", b""))
            if subject is None:
                await JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)(scope, receive, send)
                return
            scope[SCOPE_KEY] = subject
        await self.app(scope, receive, send)


class Edge:
    """Holds the gateway's state for the app's lifetime and routes ops paths past the MCP transport.

    `app` serves every other path: the MCP transport `mcp_app` behind its guards. `tasks` run
    for the app's lifetime, in the lifespan's task group (the session sweeper, the loop watch).
    """

    def __init__(self, gateway: Gateway, app: ASGIApp, mcp_app: Starlette, tasks: Sequence[Task] = ()) -> None:
        self.gateway = gateway
        self.app = app
        self.mcp_app = mcp_app
        self.tasks = tuple(tasks)
        self.ops: dict[str, Endpoint] = {r.path: r.endpoint for r in ops_routes(gateway)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        endpoint = self.ops.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
        elif scope.get("method") not in ("GET", "HEAD"):
            await PlainTextResponse("Method Not Allowed", status_code=405)(scope, receive, send)
        else:
            await (await endpoint(Request(scope, receive)))(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.gateway.running())
                tg = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(tg.cancel_scope.cancel)  # on the way out, before the group waits for them
                for task in self.tasks:
                    tg.start_soon(task)
                await stack.enter_async_context(self.mcp_app.router.lifespan_context(self.mcp_app))
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                raise
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


def http_app(gateway: Gateway, *, loop_watch: bool = False) -> ASGIApp:
    """The app both HTTP transports serve (see the module docstring); `loop_watch`: measure event-loop blocks."""
    settings = gateway.settings
    security = transport_security(settings)
    mcp_app = _mcp_app(gateway, security)
    front = settings.manifests.performance.http_server
    shape = BusyShape(
        gateway.shed_tools, settings.json_response, lowlevel(gateway.server).server_info_stamp, settings.stateless
    )
    busy = BusyEdge(mcp_app, lambda: gateway.state, shape)
    sessions = SessionGuard.for_config(busy, front, stateless=settings.stateless, table=gateway.sessions)
    tasks: list[Task] = [sessions.sweep]
    if loop_watch:
        tasks.append(LoopWatch().run)
    app: ASGIApp = Edge(gateway, RequestGuard.for_config(sessions, front), mcp_app, tasks)
    if settings.auth_subjects:
        app = BearerAuth(app, settings.auth_subjects)
    return HostOriginGuard(app, security)


def _mcp_app(gateway: Gateway, security: TransportSecuritySettings) -> Starlette:
    """The SDK's transport app; the checks the guards above make are passed to it too, as a second line."""
    settings, server = gateway.settings, gateway.server
    front = settings.manifests.performance.http_server
    if settings.transport == "sse":
        return server.sse_app(
            transport_security=security, host=settings.host, max_request_body_size=front.max_body_bytes
        )
    return server.streamable_http_app(
        json_response=settings.json_response,
        stateless_http=settings.stateless,
        transport_security=security,
        host=settings.host,
        max_request_body_size=front.max_body_bytes,
        session_idle_timeout=front.session_idle_timeout_s,
        max_sessions=front.max_sessions * 2,  # the session guard makes room first; this never refuses
    )


async def serve_http(settings: Settings, loop_watch: bool = False) -> None:
    """Serve the gateway over HTTP until SIGTERM/SIGINT; requests in flight get `http_server.shutdown_grace_s`."""
    import uvicorn

    from server.http_server import uvicorn_config

    app = http_app(Gateway(settings), loop_watch=loop_watch)
    await uvicorn.Server(uvicorn_config(settings, app)).serve()
