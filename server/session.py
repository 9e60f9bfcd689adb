"""A client's session: who it belongs to and the switches it holds, kept per session, never per process.

What one session is depends on the transport:

- stdio serves one client: the process's one session (`AppState.local_session`), the local user's;
- legacy SSE: one `GET /sse` stream, named by the `session_id` its `POST /messages/` carry;
- stateful Streamable HTTP: one `Mcp-Session-Id`, from the `initialize` that opened it to its
  DELETE, its idle timeout or its eviction;
- stateless HTTP, and any request in the 2026-07-28 per-request envelope, has none: a switch
  there would outlive nothing, so it is refused.

On HTTP the session guard (server/session_guard.py) opens each session as a `SessionState`,
bound to the principal whose request opened it, keeps it in the `SessionTable` below, and
leaves it in the ASGI scope of every request that names it; `session_of()` finds it there.
A session's privacy switch (server/privacy.py) and its log level (server/client_logs.py) are
fields of that one object, so both end with it.

The table decides, never acts: the session guard closes what it names.

- Room: a principal may hold `per_principal` sessions, everyone together `total`. Opening one
  more closes the oldest idle session first (of that principal; of anyone when the total is
  reached). Only when none is idle is the new session refused, and then only for that principal.
- Idle: nothing in flight and no open stream. A session idle for `idle_timeout_s` is closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mcp.server.context import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

if TYPE_CHECKING:
    from server.manifests import HTTPServerConfig
    from server.state import AppState

SessionTransport = Literal["stdio", "streamable-http", "sse"]
SESSION_KEY = "model_gateway.session"  # where the session guard leaves a request's session in its ASGI scope
DEFAULT_LOG_LEVEL = logging.WARNING  # what a session receives as log notifications until it sets a level


@dataclass(eq=False, slots=True)
class SessionState:
    """One client's session. Its identity is the object: `closed` turns true once, when it ends."""

    principal: str = ""  # who opened it (stdio: the local user)
    transport: SessionTransport = "stdio"
    sid: str = ""  # the transport's id for it ("" on stdio); a bearer secret: logged only at DEBUG
    privacy: bool = False  # the client's own privacy switch (server/privacy.py)
    log_level: int = DEFAULT_LOG_LEVEL  # set by the client's logging/setLevel (server/client_logs.py)
    host: bytes = b""  # Host header of the request that opened it: requests the gateway makes to it reuse it
    opened: float = 0.0
    last_active: float = 0.0
    in_flight: int = 0  # requests being served, streams excluded
    streams: int = 0  # open listening streams (GET /mcp, GET /sse)
    closed: bool = False
    cancel: Callable[[], None] | None = None  # ends the session where it is served (SSE: its stream)

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.streams == 0


def session_of(state: AppState, request: ServerRequestContext[Any, Any]) -> SessionState | None:
    """The session this request belongs to, or None when it has none."""
    if state.settings.transport == "stdio":
        return state.local_session
    if request.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    return scope_session(getattr(request.request, "scope", None))


def scope_session(scope: object) -> SessionState | None:
    """The session the session guard left in an ASGI scope, if any."""
    found = scope.get(SESSION_KEY) if isinstance(scope, dict) else None
    return found if isinstance(found, SessionState) else None


def privacy_of(state: AppState, request: ServerRequestContext[Any, Any]) -> bool:
    """The privacy mode a call runs under: the operator's, or else its session's."""
    if state.settings.privacy_mode:
        return True
    session = session_of(state, request)
    return session is not None and session.privacy


@dataclass(frozen=True)
class SessionLimits:
    per_principal: int = 64
    total: int = 4096
    idle_timeout_s: float = 600.0

    @classmethod
    def from_config(cls, config: HTTPServerConfig) -> SessionLimits:
        return cls(config.max_sessions_per_principal, config.max_sessions, config.session_idle_timeout_s)


class SessionTable:
    """Open HTTP sessions by id and by principal, with the admission and eviction rules above."""

    def __init__(self, limits: SessionLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._by_sid: dict[str, SessionState] = {}
        self._by_principal: dict[str, dict[str, SessionState]] = {}
        self._pending: dict[str, int] = {}  # sessions being opened right now, per principal
        self.refused_foreign = 0  # requests naming a session of another principal

    def __len__(self) -> int:
        return len(self._by_sid)

    def count(self, principal: str) -> int:
        return len(self._by_principal.get(principal, ()))

    def get(self, sid: str) -> SessionState | None:
        return self._by_sid.get(sid)

    def owned(self, sid: str, principal: str) -> SessionState | None:
        """The session, if `principal` opened it; None for unknown ids and other principals' alike."""
        session = self._by_sid.get(sid)
        if session is None:
            return None
        if session.principal != principal:
            self.refused_foreign += 1
            return None
        return session

    def reserve(self, principal: str) -> list[SessionState] | None:
        """Room for one more session of `principal`: the sessions to close first, or None to refuse.

        The named sessions are already out of the table (their ids answer "not found" from now on);
        the caller closes them and calls `release()` once the new session is added or has failed.
        """
        victims: list[SessionState] = []
        if self.count(principal) + self._pending.get(principal, 0) >= self.limits.per_principal:
            victim = self._oldest_idle(self._by_principal.get(principal, {}).values())
            if victim is None:
                return None
            victims.append(self._drop(victim))
        if len(self._by_sid) + sum(self._pending.values()) >= self.limits.total:
            victim = self._oldest_idle(self._by_sid.values())
            if victim is None:
                for session in victims:  # nothing was closed yet: undo
                    self._put(session)
                return None
            victims.append(self._drop(victim))
        self._pending[principal] = self._pending.get(principal, 0) + 1
        return victims

    def trim(self, principal: str) -> list[SessionState]:
        """Sessions over the caps after an opening that reserved no room: the oldest idle, out of the table."""
        victims: list[SessionState] = []
        while self.count(principal) > self.limits.per_principal:
            victim = self._oldest_idle(self._by_principal.get(principal, {}).values())
            if victim is None:
                break
            victims.append(self._drop(victim))
        while len(self._by_sid) > self.limits.total:
            victim = self._oldest_idle(self._by_sid.values())
            if victim is None:
                break
            victims.append(self._drop(victim))
        return victims

    def release(self, principal: str) -> None:
        left = self._pending.get(principal, 0) - 1
        if left > 0:
            self._pending[principal] = left
        else:
            self._pending.pop(principal, None)

    def add(self, session: SessionState) -> SessionState:
        """Into the table, active from now (a session of the same id leaves it)."""
        session.opened = session.last_active = self._clock()
        previous = self._by_sid.get(session.sid)
        if previous is not None:
            self._drop(previous)
        self._put(session)
        return session

    def remove(self, sid: str) -> SessionState | None:
        session = self._by_sid.get(sid)
        return self._drop(session) if session is not None else None

    def begin(self, session: SessionState, *, stream: bool = False) -> None:
        if stream:
            session.streams += 1
        else:
            session.in_flight += 1
        session.last_active = self._clock()

    def end(self, session: SessionState, *, stream: bool = False) -> None:
        if stream:
            session.streams = max(0, session.streams - 1)
        else:
            session.in_flight = max(0, session.in_flight - 1)
        session.last_active = self._clock()

    def expired(self) -> list[SessionState]:
        """Sessions idle for the idle timeout, taken out of the table (the caller closes them)."""
        cutoff = self._clock() - self.limits.idle_timeout_s
        stale = [s for s in self._by_sid.values() if s.idle and s.last_active <= cutoff]
        return [self._drop(s) for s in stale]

    def summary(self) -> dict[str, Any]:
        """What health shows: how many sessions are open, busy and listening now, and the caps they live under."""
        sessions = list(self._by_sid.values())
        return {
            "open": len(sessions),
            "principals": len(self._by_principal),
            "in_flight": sum(s.in_flight for s in sessions),
            "streams": sum(s.streams for s in sessions),
            "idle": sum(1 for s in sessions if s.idle),
            "privacy_on": sum(1 for s in sessions if s.privacy),
            "refused_foreign": self.refused_foreign,
            "limits": {
                "per_principal": self.limits.per_principal,
                "total": self.limits.total,
                "idle_timeout_s": self.limits.idle_timeout_s,
            },
        }

    def close_all(self) -> list[SessionState]:
        return [self._drop(s) for s in list(self._by_sid.values())]

    @staticmethod
    def _oldest_idle(sessions: Iterable[SessionState]) -> SessionState | None:
        """Nothing in flight; a session without an open stream before one that only listens; then the oldest use."""
        candidates = [s for s in sessions if s.in_flight == 0]
        return min(candidates, key=lambda s: (s.streams > 0, s.last_active), default=None)

    def _put(self, session: SessionState) -> None:
        session.closed = False
        self._by_sid[session.sid] = session
        self._by_principal.setdefault(session.principal, {})[session.sid] = session

    def _drop(self, session: SessionState) -> SessionState:
        session.closed = True
        if self._by_sid.get(session.sid) is session:
            del self._by_sid[session.sid]
        mine = self._by_principal.get(session.principal)
        if mine is not None and mine.get(session.sid) is session:
            del mine[session.sid]
            if not mine:
                del self._by_principal[session.principal]
        return session
