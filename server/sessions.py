"""The table of open HTTP sessions: who opened each, how busy it is, and which to close to make room.

The MCP SDK's transports open and serve sessions; this table records them as the gateway sees
them and decides, never acts: the session guard (`server/session_guard.py`) closes what it names.

- Ownership: a session belongs to the principal whose request opened it. Anything keyed by its id
  is checked against that principal.
- Room: a principal may hold `per_principal` sessions, everyone together `total`. Opening one
  more closes the oldest idle session first (of that principal; of anyone when the total is
  reached). Only when none is idle is the new session refused, and then only for that principal.
- Idle: nothing in flight and no open stream. A session idle for `idle_timeout_s` is closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

SessionTransport = Literal["streamable-http", "sse"]
SESSION_KEY = "model_gateway.session"  # where the session guard leaves a request's SessionHandle in its ASGI scope


@dataclass(eq=False)
class SessionHandle:
    """One open session. Its identity is the object: `closed` turns true once, when the table lets go of it."""

    sid: str
    principal: str
    transport: SessionTransport
    host: bytes  # Host header of the request that opened it: requests the gateway makes to the session reuse it
    opened: float
    last_active: float
    in_flight: int = 0  # requests being served, streams excluded
    streams: int = 0  # open listening streams (GET /mcp, GET /sse)
    closed: bool = False
    cancel: Callable[[], None] | None = field(default=None, repr=False)  # ends the session where it is served

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.streams == 0


def session_of(request: object) -> SessionHandle | None:
    """The HTTP session a request belongs to (from an MCP handler's `ctx.request`); None off HTTP or without one.

    Per-session state (log levels, switches a client may flip for itself) keys on this handle: it is
    bound to the principal that opened the session, and `closed` says when to let go of the state.
    """
    scope = getattr(request, "scope", None)
    handle = scope.get(SESSION_KEY) if isinstance(scope, dict) else None
    return handle if isinstance(handle, SessionHandle) else None


@dataclass(frozen=True)
class SessionLimits:
    per_principal: int = 64
    total: int = 4096
    idle_timeout_s: float = 600.0


class SessionTable:
    """Open sessions by id and by principal, with the admission and eviction rules above."""

    def __init__(self, limits: SessionLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._by_sid: dict[str, SessionHandle] = {}
        self._by_principal: dict[str, dict[str, SessionHandle]] = {}
        self._pending: dict[str, int] = {}  # sessions being opened right now, per principal
        self.refused_foreign = 0  # requests naming a session of another principal

    def __len__(self) -> int:
        return len(self._by_sid)

    def count(self, principal: str) -> int:
        return len(self._by_principal.get(principal, ()))

    def get(self, sid: str) -> SessionHandle | None:
        return self._by_sid.get(sid)

    def owned(self, sid: str, principal: str) -> SessionHandle | None:
        """The session, if `principal` opened it; None for unknown ids and other principals' alike."""
        handle = self._by_sid.get(sid)
        if handle is None:
            return None
        if handle.principal != principal:
            self.refused_foreign += 1
            return None
        return handle

    def reserve(self, principal: str) -> list[SessionHandle] | None:
        """Room for one more session of `principal`: the sessions to close first, or None to refuse.

        The named sessions are already out of the table (their ids answer "not found" from now on);
        the caller closes them and calls `release()` once the new session is added or has failed.
        """
        victims: list[SessionHandle] = []
        if self.count(principal) + self._pending.get(principal, 0) >= self.limits.per_principal:
            victim = self._oldest_idle(self._by_principal.get(principal, {}).values())
            if victim is None:
                return None
            victims.append(self._drop(victim))
        if len(self._by_sid) + sum(self._pending.values()) >= self.limits.total:
            victim = self._oldest_idle(self._by_sid.values())
            if victim is None:
                for handle in victims:  # nothing was closed yet: undo
                    self._put(handle)
                return None
            victims.append(self._drop(victim))
        self._pending[principal] = self._pending.get(principal, 0) + 1
        return victims

    def trim(self, principal: str) -> list[SessionHandle]:
        """Sessions over the caps after an opening that reserved no room: the oldest idle, out of the table."""
        victims: list[SessionHandle] = []
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

    def add(
        self,
        sid: str,
        principal: str,
        transport: SessionTransport,
        host: bytes,
        *,
        streams: int = 0,
        cancel: Callable[[], None] | None = None,
    ) -> SessionHandle:
        now = self._clock()
        handle = SessionHandle(sid, principal, transport, host, now, now, streams=streams, cancel=cancel)
        previous = self._by_sid.get(sid)
        if previous is not None:
            self._drop(previous)
        self._put(handle)
        return handle

    def remove(self, sid: str) -> SessionHandle | None:
        handle = self._by_sid.get(sid)
        return self._drop(handle) if handle is not None else None

    def begin(self, handle: SessionHandle, *, stream: bool = False) -> None:
        if stream:
            handle.streams += 1
        else:
            handle.in_flight += 1
        handle.last_active = self._clock()

    def end(self, handle: SessionHandle, *, stream: bool = False) -> None:
        if stream:
            handle.streams = max(0, handle.streams - 1)
        else:
            handle.in_flight = max(0, handle.in_flight - 1)
        handle.last_active = self._clock()

    def expired(self) -> list[SessionHandle]:
        """Sessions idle for the idle timeout, taken out of the table (the caller closes them)."""
        cutoff = self._clock() - self.limits.idle_timeout_s
        stale = [h for h in self._by_sid.values() if h.idle and h.last_active <= cutoff]
        return [self._drop(h) for h in stale]

    def close_all(self) -> list[SessionHandle]:
        return [self._drop(h) for h in list(self._by_sid.values())]

    @staticmethod
    def _oldest_idle(handles: Iterable[SessionHandle]) -> SessionHandle | None:
        """Nothing in flight; a session without an open stream before one that only listens; then the oldest use."""
        candidates = [h for h in handles if h.in_flight == 0]
        return min(candidates, key=lambda h: (h.streams > 0, h.last_active), default=None)

    def _put(self, handle: SessionHandle) -> None:
        handle.closed = False
        self._by_sid[handle.sid] = handle
        self._by_principal.setdefault(handle.principal, {})[handle.sid] = handle

    def _drop(self, handle: SessionHandle) -> SessionHandle:
        handle.closed = True
        if self._by_sid.get(handle.sid) is handle:
            del self._by_sid[handle.sid]
        mine = self._by_principal.get(handle.principal)
        if mine is not None and mine.get(handle.sid) is handle:
            del mine[handle.sid]
            if not mine:
                del self._by_principal[handle.principal]
        return handle
