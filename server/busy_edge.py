"""Busy answers at the HTTP edge: a model tool call over `max_in_flight` is refused before the SDK reads it.

A busy answer must cost far less than a served call, or shedding only moves the
overload around. Inside the tool (server/toolkit.py) a refusal still pays the SDK's
whole request path: JSON-RPC validation, the session's streams, the tool-call
machinery, result serialisation. `BusyEdge` sits between the session guard and the
SDK's transport app: when the gateway is at its limit and the request guard's parsed
message (server/http_guard.py) is a `tools/call` of a model tool that the transport
would take, it answers here with the very result the tool gives (a CallToolResult with
`isError` and the busy text, under the request's id), counted in
`model_gateway_tool_calls_total{outcome="busy"}` and in the shedder's summary audit
records (no record or fsync of its own: server/shedding.py).

The session guard runs first, so a session id that is unknown or another principal's
is still a 404. Anything the transport would refuse or shape otherwise (Accept or
Content-Type it does not take, a handshake-era call without a session, a 2026 call
whose routing headers or envelope do not match its body) is passed on untouched.
Legacy SSE (`POST /messages/`) answers on the session's stream, not in the POST, so
its calls keep the in-tool check, as stdio does, and as every transport does for the
race between this check and the call taking its slot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_types import SERVER_INFO_META_KEY
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send

from server.envelope import Request
from server.http_guard import REQUEST_KEY, RequestState, header
from server.session import SESSION_KEY, SessionState

if TYPE_CHECKING:
    from server.state import AppState

_VERSION_META = "io.modelcontextprotocol/protocolVersion"
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform")]
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def refuse_busy(state: AppState, tool: str) -> str:
    """Count one busy answer (metrics, the shedder's summary audit) and give its text."""
    m = state.metrics
    m.child(m.calls, tool, "busy").inc()
    m.child(m.errors, tool, "busy").inc()
    await state.shedder.shed(tool, state.write_audit)
    return state.shedder.message()


def busy_result(request_id: str | int, text: str, server_info: dict[str, Any] | None = None) -> bytes:
    """The JSON-RPC answer a model tool gives when it is busy (what the SDK sends for its ToolError).

    A 2026-era answer (`server_info` given) carries what that era requires of every result:
    `resultType` and the server's identity in `_meta`.
    """
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": True}
    if server_info is not None:
        result["resultType"] = "complete"
        result["_meta"] = {SERVER_INFO_META_KEY: server_info}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}, separators=(",", ":")).encode()


def _accepts(scope: Scope, sse: bool) -> bool:
    """The Accept header the transport requires: JSON, and for an SSE answer the event stream too."""
    accept = (header(scope, b"accept") or b"").decode("latin-1").lower()
    types = {part.split(";")[0].strip() for part in accept.split(",")}
    wild = "*/*" in types
    json_ok = wild or "application/json" in types or "application/*" in types
    sse_ok = wild or "text/event-stream" in types or "text/*" in types
    return json_ok and (sse_ok or not sse)


def _modern_call_matches(scope: Scope, version: str, message: dict[str, Any], tool: str) -> bool:
    """A 2026 request whose routing headers and `_meta` version agree with its body (else the SDK answers)."""
    if header(scope, b"mcp-method") != b"tools/call" or header(scope, b"mcp-name") != tool.encode():
        return False
    meta = message["params"].get("_meta")
    return isinstance(meta, dict) and meta.get(_VERSION_META) == version


@dataclass(frozen=True)
class BusyShape:
    """How the transport behind answers: which tools shed, JSON or SSE, sessions or none, the 2026 stamp."""

    tools: frozenset[str]
    json_response: bool
    server_info: dict[str, Any]  # the SDK's identity stamp on 2026-era results
    stateless: bool = False
    path: str = "/mcp"


class BusyEdge:
    """ASGI layer: at the limit, a model tool call over Streamable HTTP is answered busy here."""

    def __init__(self, app: ASGIApp, state: Callable[[], AppState | None], shape: BusyShape) -> None:
        self.app = app
        self._state = state
        self._shape = shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state() if scope["type"] == "http" else None
        if state is not None and state.shedder.in_flight >= state.shedder.max_in_flight:
            answer = self._answer_shape(scope)
            if answer is not None:
                request, tool, sse, modern = answer
                text = await refuse_busy(state, tool)
                info = self._shape.server_info if modern else None
                await _send(send, scope, busy_result(request.id, text, info), sse)
                return
        await self.app(scope, receive, send)

    def _answer_shape(self, scope: Scope) -> tuple[Request, str, bool, bool] | None:
        """(the request, its tool, answer as SSE, 2026 era) when the transport would take this call; else None."""
        if scope["method"] != "POST" or scope["path"] != self._shape.path:
            return None
        found = scope.get(REQUEST_KEY)
        request = found.message if isinstance(found, RequestState) else None
        if not isinstance(request, Request) or request.method != "tools/call":
            return None
        params = request.message.get("params")
        tool = params.get("name") if isinstance(params, dict) else None
        if not isinstance(tool, str) or tool not in self._shape.tools:
            return None
        raw = header(scope, b"mcp-protocol-version")
        version = raw.decode("latin-1") if raw is not None else None
        if version in MODERN_PROTOCOL_VERSIONS:
            modern = _modern_call_matches(scope, version or "", request.message, tool)
            return (request, tool, False, True) if modern and _accepts(scope, not self._shape.json_response) else None
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        if not self._shape.stateless and not isinstance(scope.get(SESSION_KEY), SessionState):
            return None  # no session: the transport's own refusal
        content_type = (header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        sse = not self._shape.json_response
        if content_type != b"application/json" or not _accepts(scope, sse):
            return None
        return request, tool, sse, False


async def _send(send: Send, scope: Scope, body: bytes, sse: bool) -> None:
    """200 with the answer: JSON, or one `message` event on a stream that then ends (as the transport does)."""
    headers = list(_SSE_HEADERS if sse else _JSON_HEADERS)
    session = scope.get(SESSION_KEY)
    if isinstance(session, SessionState) and session.sid:
        headers.append((b"mcp-session-id", session.sid.encode("latin-1")))
    if sse:
        body = b"event: message\r\ndata: " + body + b"\r\n\r\n"
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
