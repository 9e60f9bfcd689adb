"""build_server(settings) -> MCPServer; the lifespan builds and tears down AppState.

Nothing slow runs before the first `tools/list`: adapters are constructed
(cheap, no I/O), the cached discovery snapshot is read, and probing, model
loading and revalidation start in the background.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters.base import Adapter
from adapters.registry import create_adapter
from server import __version__
from server.batching import EmbedCoalescer
from server.client_logs import ClientLogs, client_log_scope
from server.config import Settings
from server.discovery import Discovery
from server.governance import limiter_for, open_audit, redactor_for
from server.health import StateRef, health_report
from server.http_guard import HostCheck, HostOriginGuard, RequestGuard, cancel_when_client_leaves, guarded
from server.policy import PolicyEngine
from server.principal import SCOPE_KEY, principal_middleware, token_digest
from server.redact import redact_tool_errors, redacted_logs
from server.router import Breaker, Router
from server.session_guard import SessionGuard
from server.state import AppState
from server.telemetry import CONTENT_TYPE, Metrics
from server.tools import register_tools

log = logging.getLogger("model_gateway")

INSTRUCTIONS = (
    "Model tools served by a local-first gateway: `embed` turns texts into vectors, `rerank` orders documents "
    "by relevance to a query, `chat` generates a reply. Call `models` to see what is routable. Batch texts "
    "into one `embed` call instead of one call per text."
)


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    context = settings.adapter_context()
    return {m.name: create_adapter(m, context) for m in settings.manifests.adapters}


@asynccontextmanager
async def gateway_state(settings: Settings, adapters: Mapping[str, Adapter] | None = None) -> AsyncIterator[AppState]:
    """Build every long-lived piece, run background work in one task group, close all on exit.

    `adapters` replaces the ones the manifests describe (tests inject fakes through this seam).
    """
    perf = settings.manifests.performance
    metrics = Metrics()
    adapters = dict(adapters) if adapters is not None else build_adapters(settings)
    discovery = Discovery(adapters, perf.discovery, settings.snapshot_path, metrics.observe_probe)
    if settings.use_discovery_cache:
        discovery.load_cache()
    breakers = {n: Breaker(perf.breaker, partial(metrics.breaker_changed, n)) for n in adapters}
    aliases = {m.name: {a: spec.name for spec in m.models for a in spec.aliases} for m in settings.manifests.adapters}
    router = Router(adapters, settings.manifests.routes, discovery, breakers, aliases)
    router.privacy_mode = discovery.privacy_mode = settings.privacy_mode
    redactor = redactor_for(settings)
    audit = open_audit(settings, redactor)
    async with AsyncExitStack() as stack:
        stack.enter_context(redacted_logs(redactor))
        stack.push_async_callback(_close_adapters, adapters)
        stack.push_async_callback(audit.aclose)
        coalescer = await stack.enter_async_context(
            EmbedCoalescer(perf.batching, perf.deadlines.embed_s, metrics.observe_batch)
        )
        tg = await stack.enter_async_context(anyio.create_task_group())
        client_logs = ClientLogs(redactor, max_sessions=perf.http_server.max_sessions)
        state = AppState(
            settings=settings,
            adapters=adapters,
            discovery=discovery,
            router=router,
            coalescer=coalescer,
            policy=PolicyEngine(settings.manifests.policy),
            audit=audit,
            metrics=metrics,
            limiter=limiter_for(settings),
            redactor=redactor,
            client_logs=client_logs,
        )
        tg.start_soon(discovery.run)
        tg.start_soon(client_logs.run)
        try:
            yield state
        finally:
            tg.cancel_scope.cancel()


async def _close_adapters(adapters: dict[str, Adapter]) -> None:
    with anyio.CancelScope(shield=True):
        for name, adapter in adapters.items():
            try:
                with anyio.fail_after(10):
                    await adapter.aclose()
            except Exception as exc:  # closing one adapter must not leak the others
                log.warning("adapter %s did not close cleanly: %s", name, type(exc).__name__)


def build_server(
    settings: Settings, ref: StateRef | None = None, adapters: Mapping[str, Adapter] | None = None
) -> MCPServer[AppState]:
    """The MCP server. Pass a `ref` already holding state to share one AppState across connections (SSE)."""
    ref = ref or StateRef()

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        if ref.state is not None:
            yield ref.state
            return
        async with gateway_state(settings, adapters) as state:
            ref.state = state
            try:
                yield state
            finally:
                ref.state = None

    server: MCPServer[AppState] = MCPServer(
        "model-gateway",
        title="brAInwav Model Gateway",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=settings.log_level,  # type: ignore[arg-type]
    )
    server.middleware.append(principal_middleware)
    server.middleware.append(client_log_scope)
    server.middleware.append(cancel_when_client_leaves)
    server.middleware.append(redact_tool_errors)
    register_tools(server, ref)
    for route in ops_routes(ref, transport_security(settings)):
        server.custom_route(route.path, methods=["GET"])(route.endpoint)
    return server


def ops_routes(ref: StateRef, security: TransportSecuritySettings | None = None) -> list[Route]:
    """GET /health (503 when a capability cannot be served) and GET /metrics, behind the Host/Origin check.

    Without `security`, the loopback names only (the stdio metrics port listens on 127.0.0.1).
    """
    check = HostCheck(security or _LOOPBACK)

    async def health(request: Request) -> Response:
        if ref.state is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        report = health_report(ref.state)
        code = 200 if all(report["capabilities"].values()) and report["audit"]["ok"] else 503
        return JSONResponse(report, status_code=code)

    async def metrics(request: Request) -> Response:
        if ref.state is None:
            return Response(b"", media_type=CONTENT_TYPE)
        ref.state.metrics.snapshot_age.set(ref.state.discovery.snapshot.age_s())
        return Response(ref.state.metrics.render(), media_type=CONTENT_TYPE)

    return [
        Route("/health", guarded(health, check), methods=["GET"]),
        Route("/metrics", guarded(metrics, check), methods=["GET"]),
    ]


def transport_security(settings: Settings) -> TransportSecuritySettings:
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *settings.allowed_hosts]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    origins += [f"http://{h}" for h in settings.allowed_hosts] + [f"https://{h}" for h in settings.allowed_hosts]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


_LOOPBACK = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
)


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


def http_app(settings: Settings, server: MCPServer[AppState]) -> ASGIApp:
    """The MCP transport behind the front door (outermost first): Host/Origin, bearer token, body, session."""
    security = transport_security(settings)
    front = settings.manifests.performance.http_server
    sdk: Starlette
    if settings.transport == "sse":
        sdk = server.sse_app(
            transport_security=security, host=settings.host, max_request_body_size=front.max_body_bytes
        )
    else:
        sdk = server.streamable_http_app(
            json_response=settings.json_response,
            stateless_http=settings.stateless,
            transport_security=security,
            host=settings.host,
            max_request_body_size=front.max_body_bytes,
            session_idle_timeout=front.session_idle_timeout_s,
            max_sessions=front.max_sessions * 2,  # the session guard makes room first; this never refuses
        )
    app: ASGIApp = SessionGuard.for_config(sdk, front, stateless=settings.stateless)
    app = RequestGuard.for_config(app, front)
    if settings.auth_subjects:
        app = BearerAuth(app, settings.auth_subjects)
    return HostOriginGuard(app, security)


async def serve_http(settings: Settings) -> None:
    import uvicorn

    from server.http_server import uvicorn_config  # imports uvicorn: kept off the stdio start

    ref = StateRef()
    server = build_server(settings, ref)
    config = uvicorn_config(settings, http_app(settings, server))
    if settings.transport == "sse":
        # legacy SSE runs the MCP lifespan per connection: share one AppState across them
        async with gateway_state(settings) as state:
            ref.state = state
            await uvicorn.Server(config).serve()
    else:
        await uvicorn.Server(config).serve()
