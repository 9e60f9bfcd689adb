"""ASGI layer in front of the MCP SDK's HTTP transports: each session answers only to its principal.

Streamable HTTP names a session in the `Mcp-Session-Id` header, legacy SSE in the `session_id`
query parameter of `POST /messages/`. For every request that names one, the session must be in
the table and belong to the caller's principal; otherwise the answer is the transport's own
"session not found" (404), the same for an unknown id and for someone else's, on every verb.
New sessions pass `SessionTable.reserve()` first: at the principal's cap its oldest idle session
is closed to make room. Sessions idle past the timeout are closed by `sweep()`, a task of the
app's lifespan (server/http_edge.py). Each session is a `server.session.SessionState`, bound to
the principal whose request opened it and left in the ASGI scope of every request that names
it: the call path finds the session's switches (privacy, log level) there.

Closing uses only what a client could do: a Streamable HTTP session is ended by a DELETE sent
through the transport (which frees everything it holds); an SSE session by cancelling the
request that streams it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID

import anyio
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.http_guard import REQUEST_KEY, RequestState, header, jsonrpc_error
from server.manifests import HTTPServerConfig
from server.principal import scope_principal
from server.session import SESSION_KEY, SessionLimits, SessionState, SessionTable, SessionTransport

log = logging.getLogger("model_gateway.http")

MCP_SESSION = b"mcp-session-id"
_SSE_SESSION = re.compile(rb"session_id=([0-9a-f]{32})")
_CLOSE_DEADLINE_S = 5.0


def _not_found() -> Response:
    return jsonrpc_error(404, -32600, "Session not found")


def _refused(limit: int) -> Response:
    text = (
        f"this principal already holds {limit} open sessions, none of them idle "
        "(http_server.max_sessions_per_principal); end one with DELETE or retry later"
    )
    return jsonrpc_error(503, -32603, text)


@dataclass
class _Opening:
    """A request that may open a session: who asks, from which Host, and whether room was reserved for it."""

    principal: str
    host: bytes
    reserved: bool


def _handshake_era(scope: Scope) -> bool:
    """The 2026 protocol is stateless: its requests open no session (the transport routes them apart)."""
    version = header(scope, b"mcp-protocol-version")
    return version is None or version.decode("latin-1") in HANDSHAKE_PROTOCOL_VERSIONS


def _is_initialize(scope: Scope) -> bool:
    """Whether the message is an `initialize`, the request that opens a session (anything else is refused there).

    The request guard has parsed the message already (once, bounded). Room is made ahead only for
    these, so no other request costs anyone a session; whatever else the transport accepts as an
    opening is trimmed back to the caps once it is open.
    """
    state = scope.get(REQUEST_KEY)
    return isinstance(state, RequestState) and state.method == "initialize"


def sse_session_id(scope: Scope) -> str | None:
    """The canonical id a `POST /messages/?session_id=` names ("" when it names none that could exist)."""
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
        if key == "session_id":
            try:
                return UUID(hex=value).hex
            except ValueError:
                return ""
    return None


class SessionGuard:
    def __init__(
        self,
        app: ASGIApp,
        table: SessionTable,
        *,
        stateless: bool = False,
        mcp_path: str = "/mcp",
        sse_path: str = "/sse",
        messages_path: str = "/messages/",
    ) -> None:
        self.app = app
        self.table = table
        self._stateless = stateless
        self._mcp_path = mcp_path
        self._sse_path = sse_path
        self._messages_path = messages_path

    @classmethod
    def for_config(
        cls, app: ASGIApp, config: HTTPServerConfig, *, stateless: bool, table: SessionTable | None = None
    ) -> SessionGuard:
        """`table`: the gateway's session table (health reads it), else a new one under the config's caps."""
        table = table if table is not None else SessionTable(SessionLimits.from_config(config))
        return cls(app, table, stateless=stateless)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        sid = header(scope, MCP_SESSION) if path == self._mcp_path and not self._stateless else None
        if sid is not None:
            await self._in_session(scope, receive, send, sid.decode("latin-1"))
        elif path.startswith(self._messages_path):
            await self._sse_message(scope, receive, send)
        elif path == self._mcp_path and scope["method"] == "POST" and not self._stateless and _handshake_era(scope):
            await self._open(scope, receive, send, "streamable-http", reserve=_is_initialize(scope))
        elif path == self._sse_path and scope["method"] == "GET":
            await self._open(scope, receive, send, "sse")
        else:
            await self.app(scope, receive, send)

    async def _in_session(self, scope: Scope, receive: Receive, send: Send, sid: str) -> None:
        session = self.table.owned(sid, scope_principal(scope) or "")
        if session is None:
            await _not_found()(scope, receive, send)
            return
        stream = scope["method"] == "GET"
        status = await self._serve(scope, receive, send, session, stream)
        if status == 404 or (scope["method"] == "DELETE" and status is not None and status < 300):
            self.table.remove(sid)  # ended by its client, or already gone in the transport

    async def _sse_message(self, scope: Scope, receive: Receive, send: Send) -> None:
        sid = sse_session_id(scope)
        if sid is None:
            await self.app(scope, receive, send)  # the transport answers "session_id is required"
            return
        session = self.table.owned(sid, scope_principal(scope) or "") if sid else None
        if session is None:
            await Response("Could not find session", status_code=404)(scope, receive, send)
            return
        await self._serve(scope, receive, send, session, stream=False)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, session: SessionState, stream: bool
    ) -> int | None:
        scope[SESSION_KEY] = session
        status: int | None = None

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.table.begin(session, stream=stream)
        try:
            await self.app(scope, receive, watch)
        finally:
            self.table.end(session, stream=stream)
        return status

    async def _open(
        self, scope: Scope, receive: Receive, send: Send, transport: SessionTransport, reserve: bool = True
    ) -> None:
        opening = _Opening(scope_principal(scope) or "", header(scope, b"host") or b"", reserved=reserve)
        victims = self.table.reserve(opening.principal) if reserve else []
        if victims is None:
            log.warning("refused a new session: the principal's sessions are all busy")
            await _refused(self.table.limits.per_principal)(scope, receive, send)
            return
        try:
            for victim in victims:
                await self._close(victim)
            if transport == "sse":
                await self._open_sse(scope, receive, send, opening)
            else:
                await self._open_streamable(scope, receive, send, opening)
        finally:
            if opening.reserved:
                self.table.release(opening.principal)
        for victim in self.table.trim(opening.principal):
            await self._close(victim)

    def _register(self, opening: _Opening, sid: str, transport: SessionTransport, **extra: Any) -> SessionState:
        """Into the table before the client can learn the id; the reservation made for it is used up."""
        session = self.table.add(SessionState(opening.principal, transport, sid, host=opening.host, **extra))
        if opening.reserved:
            opening.reserved = False
            self.table.release(opening.principal)
        return session

    async def _open_streamable(self, scope: Scope, receive: Receive, send: Send, opening: _Opening) -> None:
        session: SessionState | None = None

        async def register(message: Message) -> None:
            nonlocal session
            if message["type"] == "http.response.start" and message["status"] < 400:
                sid = next((v for k, v in message.get("headers", ()) if k.lower() == MCP_SESSION), None)
                if sid is not None:
                    session = self._register(opening, bytes(sid).decode("latin-1"), "streamable-http")
                    self.table.begin(session)
            await send(message)

        try:
            await self.app(scope, receive, register)
        finally:
            if session is not None:
                self.table.end(session)

    async def _open_sse(self, scope: Scope, receive: Receive, send: Send, opening: _Opening) -> None:
        session: SessionState | None = None
        started = completed = False
        with anyio.CancelScope() as stream_scope:

            async def register(message: Message) -> None:
                nonlocal session, started, completed
                if message["type"] == "http.response.start":
                    started = True
                elif message["type"] == "http.response.body":
                    completed = not message.get("more_body", False)
                    found = _SSE_SESSION.search(message.get("body", b"")) if session is None else None
                    if found is not None:
                        sid = found.group(1).decode()
                        session = self._register(opening, sid, "sse", streams=1, cancel=stream_scope.cancel)
                await send(message)

            try:
                await self.app(scope, receive, register)
            finally:
                if session is not None:
                    session.streams = 0
                    if self.table.get(session.sid) is session:
                        self.table.remove(session.sid)
        if stream_scope.cancelled_caught and started and not completed:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _close(self, session: SessionState) -> None:
        """End a session the table let go of, freeing what the transport holds for it."""
        if session.cancel is not None:
            session.cancel()
            return
        try:
            with anyio.fail_after(_CLOSE_DEADLINE_S):
                await _delete_session(self.app, self._mcp_path, session)
        except Exception as exc:  # one session that will not close must not stop the others
            log.warning("closing an idle session failed: %s", type(exc).__name__)

    async def sweep(self) -> None:
        """Close sessions idle past the timeout, until cancelled (a task of the app's lifespan)."""
        period = max(0.5, min(self.table.limits.idle_timeout_s / 4, 30.0))
        while True:
            await anyio.sleep(period)
            stale = self.table.expired()
            if stale:
                log.info("closing %d idle session(s)", len(stale))
            for session in stale:
                await self._close(session)


async def _delete_session(app: ASGIApp, path: str, session: SessionState) -> None:
    """`DELETE <path>` for the session, sent to the transport as its own client would."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "DELETE",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", session.host), (MCP_SESSION, session.sid.encode())],
        "client": None,
        "server": None,
        "state": {},
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def discard(message: Message) -> None:
        return None

    await app(scope, receive, discard)
