"""The HTTP edge: the ASGI app both HTTP transports serve, and `serve_http()`.

`http_app(gateway)` is the one composition point, outermost first:

    BearerAuth               when tokens are configured: every path but /health needs one
      Edge                   lifespan: the gateway's state, then the SDK transport's own
        GET /health, /metrics
        everything else      the SDK's Streamable HTTP app (/mcp) or legacy SSE app (/sse, /messages)

The Host/Origin checks (`transport_security`) are passed to the SDK's app.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack

from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.app import Gateway
from server.config import Settings
from server.health import health_report
from server.principal import SCOPE_KEY, token_digest
from server.telemetry import CONTENT_TYPE

Endpoint = Callable[[Request], Awaitable[Response]]


def ops_routes(gateway: Gateway) -> list[Route]:
    """GET /health (503 when a capability cannot be served or the audit cannot write) and GET /metrics."""

    async def health(request: Request) -> Response:
        state = gateway.state
        if state is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        report = health_report(state)
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


def ops_app(gateway: Gateway) -> Starlette:
    """/health and /metrics alone (stdio's `--metrics-port` listener)."""
    return Starlette(routes=ops_routes(gateway))


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
    """Holds the gateway's state for the app's lifetime and routes ops paths past the MCP transport."""

    def __init__(self, gateway: Gateway, mcp_app: Starlette) -> None:
        self.gateway = gateway
        self.mcp_app = mcp_app
        self.ops: dict[str, Endpoint] = {r.path: r.endpoint for r in ops_routes(gateway)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        endpoint = self.ops.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.mcp_app(scope, receive, send)
        elif scope.get("method") not in ("GET", "HEAD"):
            await PlainTextResponse("Method Not Allowed", status_code=405)(scope, receive, send)
        else:
            await (await endpoint(Request(scope, receive)))(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.gateway.running())
                await stack.enter_async_context(self.mcp_app.router.lifespan_context(self.mcp_app))
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                raise
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


def http_app(gateway: Gateway) -> ASGIApp:
    settings, server = gateway.settings, gateway.server
    security = transport_security(settings)
    mcp_app: Starlette
    if settings.transport == "sse":
        mcp_app = server.sse_app(transport_security=security, host=settings.host)
    else:
        mcp_app = server.streamable_http_app(
            json_response=settings.json_response,
            stateless_http=settings.stateless,
            transport_security=security,
            host=settings.host,
        )
    app: ASGIApp = Edge(gateway, mcp_app)
    return BearerAuth(app, settings.auth_subjects) if settings.auth_subjects else app


async def serve_http(settings: Settings) -> None:
    import uvicorn

    app = http_app(Gateway(settings))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
