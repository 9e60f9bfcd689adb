"""ASGI layers at the HTTP front door: Host/Origin checks, bounded and checked request bodies, dropped clients.

- `HostCheck` / `HostOriginGuard`: every path (the MCP endpoints, /health, /metrics, anything else)
  answers only to the Host and Origin values the MCP transports accept, so a web page that rebinds
  its DNS name to 127.0.0.1 reads nothing. Refusals never echo the header back or log it whole.
- `RequestGuard`: a body larger than the cap is refused (413) from its Content-Length before any of
  it is read, or as soon as a streamed body passes the cap; a body not received in full within the
  deadline is refused (408). A message POSTed to an MCP endpoint is parsed once, by the bounded
  parser every transport uses (`server.jsonparse`, large bodies in a worker thread), and held to
  the same JSON-RPC envelope rules as a stdio line (`server.envelope`: ids, method and tool name
  lengths, params, batches); a message that breaks one is answered here (400, a JSON-RPC error
  naming the rule and the limit, never an echo) and never reaches the SDK. The body is handed on
  whole, and the parsed message stays in the request's `RequestState` for the layers below.
- When the client goes away before its answer is complete (the HTTP server's protocol reports
  it: `RequestState.client_left`), the tool call it was waiting for is cancelled (the call path
  enters `RequestState.hangup()` around it: server/toolkit.py), and the request itself is cut
  after a short grace.

The connection-level bound (request headers within a deadline) lives in `server/http_server.py`,
below ASGI, where the headers are parsed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import envelope
from server.envelope import Notification, Rejected, Reply, Request
from server.jsonparse import INLINE_MAX, JSONParseError, parse_large, parse_small
from server.manifests import HTTPServerConfig

log = logging.getLogger("model_gateway.http")

REQUEST_KEY = "model_gateway.request"
CLIENT_GONE = -32800  # JSON-RPC code the MCP transports use for a request cancelled before its answer
CLIENT_GONE_MESSAGE = "the client disconnected; the request was cancelled"


def header(scope: Scope, name: bytes) -> bytes | None:
    """One request header (lower-case name), without building a Headers object per request."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value)
    return None


def _matches(value: str, allowed: Iterable[str]) -> bool:
    """Exact match, or `base:*` for `base:<digits>` (the MCP SDK's rule, with the port checked to be a number)."""
    for pattern in allowed:
        if value == pattern:
            return True
        if pattern.endswith(":*"):
            base = pattern[:-1]
            if value.startswith(base) and value[len(base) :].isdigit():
                return True
    return False


class HostCheck:
    """The Host/Origin rule of the MCP transports, for any request."""

    def __init__(self, security: TransportSecuritySettings) -> None:
        self._on = security.enable_dns_rebinding_protection
        self._hosts = tuple(security.allowed_hosts)
        self._origins = tuple(security.allowed_origins)

    def refusal(self, scope: Scope) -> Response | None:
        """None when the request may pass; else the answer (421 for Host, 403 for Origin)."""
        if not self._on:
            return None
        host = header(scope, b"host")
        if host is None or not _matches(host.decode("latin-1"), self._hosts):
            log.debug("refused a request with a Host header that is not allowed")
            return Response("Invalid Host header", status_code=421)
        origin = header(scope, b"origin")
        if origin is not None and not _matches(origin.decode("latin-1"), self._origins):
            log.debug("refused a request with an Origin header that is not allowed")
            return Response("Invalid Origin header", status_code=403)
        return None


class HostOriginGuard:
    """ASGI layer: `HostCheck` on every HTTP request, before anything else reads it."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self._check = HostCheck(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._check.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass(eq=False)
class RequestState:
    """What the guard knows about one HTTP request, left in its scope for the layers and the call below."""

    body: bytes
    message: Request | Notification | Reply | None = None  # the parsed JSON-RPC message of a POST to an endpoint
    grace_s: float = 5.0
    disconnected: bool = False
    responded: bool = False  # the answer was sent in full
    on_disconnect: list[Callable[[], None]] = field(default_factory=list)
    cut: anyio.CancelScope | None = None  # around the request itself, while it runs
    _clock: tuple[float, float] = (0.0, 0.0)  # (event-loop time, monotonic time) when the request began

    @property
    def client_gone(self) -> bool:
        return self.disconnected and not self.responded

    @property
    def method(self) -> str | None:
        """The JSON-RPC method of the message POSTed (None for anything else)."""
        return self.message.method if isinstance(self.message, Request | Notification) else None

    @contextmanager
    def hangup(self) -> Iterator[anyio.CancelScope]:
        """A scope cancelled when this request's client leaves before its answer (at once if it already has)."""
        with anyio.CancelScope() as scope:
            if self.client_gone:
                scope.cancel()
            self.on_disconnect.append(scope.cancel)
            try:
                yield scope
            finally:
                self.on_disconnect.remove(scope.cancel)

    def client_left(self) -> None:
        """The client closed its connection before the answer was complete: cancel what it waits for.

        Called from the HTTP server's protocol when the connection drops (no task per request
        watches for it), or when a layer reads `http.disconnect`. Hooks (the call) are cancelled
        at once; the request itself is cut after the grace, or at once when nothing is hooked.
        """
        if self.disconnected:
            return
        self.disconnected = True
        if self.responded:
            return
        hooks = list(self.on_disconnect)
        for cancel in hooks:
            cancel()
        if self.cut is None:
            return
        if not hooks:
            self.cut.cancel()
            return
        loop_then, mono_then = self._clock
        self.cut.deadline = min(self.cut.deadline, loop_then + time.monotonic() - mono_then + self.grace_s)


def request_state(request: object | None) -> RequestState | None:
    """The guard's state of the HTTP request an MCP message arrived in (`ServerRequestContext.request`)."""
    scope = getattr(request, "scope", None)
    found = scope.get(REQUEST_KEY) if isinstance(scope, dict) else None
    return found if isinstance(found, RequestState) else None


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    timeout_s: float
    cancel_grace_s: float = 5.0  # after cancelling its call, how long a dropped client's request may take to end


def jsonrpc_error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON-RPC error body (no id), as the MCP transports answer requests they refuse."""
    body = envelope.encode(envelope.error_response(None, code, message))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str) -> Response:
    """A refusal before the body was read: the connection cannot carry another request."""
    return jsonrpc_error(status, envelope.INVALID_REQUEST, message, {"connection": "close"})


class RequestGuard:
    """ASGI layer: bounded, checked request bodies, and a dropped client's request cancelled, not run to its end."""

    def __init__(self, app: ASGIApp, limits: BodyLimits, endpoints: tuple[str, ...] = ("/mcp", "/messages/")) -> None:
        self.app = app
        self._limits = limits
        self._endpoints = endpoints  # where POSTed bodies are JSON-RPC messages (a trailing "/": a prefix)
        self._parse_limiter = anyio.CapacityLimiter(1)  # one large body parsed at a time

    @classmethod
    def for_config(cls, app: ASGIApp, config: HTTPServerConfig) -> RequestGuard:
        return cls(app, BodyLimits(config.max_body_bytes, config.body_timeout_s))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        state = RequestState(body, grace_s=self._limits.cancel_grace_s)
        if scope["method"] == "POST" and self._is_endpoint(scope["path"]):
            refusal = await self._check_message(state)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        scope[REQUEST_KEY] = state
        try:
            await self._serve(scope, receive, send, state)
        finally:
            state.cut, state.body, state.message = None, b"", None  # the scope may outlive the request

    async def _serve(self, scope: Scope, receive: Receive, send: Send, state: RequestState) -> None:
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": state.body, "more_body": False}
            message = await receive()
            if message["type"] == "http.disconnect":
                state.client_left()
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state.responded = True
            await send(message)

        with anyio.CancelScope() as cut:
            state.cut, state._clock = cut, (anyio.current_time(), time.monotonic())
            await self.app(scope, replay, tracking_send)

    def _is_endpoint(self, path: str) -> bool:
        return any(path == e or (e.endswith("/") and path.startswith(e)) for e in self._endpoints)

    async def _check_message(self, state: RequestState) -> Response | None:
        """Parse the message once and hold it to the envelope rules; the answer owed when it breaks one."""
        body = state.body
        try:
            if len(body) <= INLINE_MAX:
                value = parse_small(body)
            else:  # off the loop: the iterative parser gives the GIL up between tokens
                value = await anyio.to_thread.run_sync(parse_large, body, limiter=self._parse_limiter)
        except JSONParseError as exc:
            return _refused(envelope.parse_failed(exc.reason, limit=exc.limit, head=body[:256]))
        outcome = envelope.classify(value)
        if isinstance(outcome, list):
            answers = envelope.batch_errors(outcome)
            reason = "batches are not supported; send each message in its own request"
            error = envelope.error_response(None, envelope.INVALID_REQUEST, f"Invalid request: {reason}")
            log.debug("refused a batch of %d messages", len(outcome))
            return Response(envelope.encode(answers or error), status_code=400, media_type="application/json")
        if isinstance(outcome, Rejected):
            return _refused(outcome)
        state.message = outcome
        return None

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once the request has been answered (too large, too slow, client gone)."""
        cap = self._limits.max_bytes
        declared = header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _error(400, "Content-Length is not a number")(scope, receive, send)
                return None
            if int(declared) > cap:
                await self._too_large(scope, receive, send, int(declared))
                return None
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self._limits.timeout_s) as deadline:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None  # the client left before sending its body
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > cap:
                    await self._too_large(scope, receive, send, None)
                    return None
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            log.info("refused a request whose body did not arrive within %.0f s", self._limits.timeout_s)
            text = f"request body not received within {self._limits.timeout_s:g} s (http_server.body_timeout_s)"
            await _error(408, text)(scope, receive, send)
            return None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, declared: int | None) -> None:
        cap = self._limits.max_bytes
        size = f"{declared} bytes" if declared is not None else "over the limit"
        log.info("refused a request body %s (limit %d bytes)", size, cap)
        text = f"request body is {size}; the limit is {cap} bytes (http_server.max_body_bytes)"
        await _error(413, text)(scope, receive, send)


def _refused(rejected: Rejected) -> Response:
    """A message that breaks the envelope rules: the JSON-RPC error owed (one naming the rule when none is)."""
    log.debug("refused a message: %s", rejected.reason)
    error = rejected.error or envelope.error_response(
        None, envelope.INVALID_REQUEST, f"Invalid request: {rejected.reason}"
    )
    return Response(envelope.encode(error), status_code=400, media_type="application/json")
