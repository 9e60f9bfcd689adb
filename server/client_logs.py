"""Log notifications for MCP clients: each session receives `notifications/message` at the level it set.

- A session's level is its own. `logging/setLevel` changes what that session receives and
  nothing else (stderr keeps the operator's MODEL_GATEWAY_LOG_LEVEL). Until it sets one, a
  session receives warnings and worse.
- Scope. A record emitted while a request is served goes to that request's session only; a
  record emitted outside any request (an adapter found down, the audit sink failing) goes to
  every session at that level. Only the gateway's own loggers (`model_gateway.*`, `adapters.*`)
  are forwarded: library records can quote traffic of other sessions.
- Bounds. The text passes the same redactor as stderr and is then cut to MAX_CHARS; a session
  receives at most RATE_PER_S messages a second (bursts of BURST); what is held back is counted
  and reported in one message once there is room again. The queue to all sessions holds QUEUE
  entries; a client slow to read loses messages, never stalls the server.

Records may come from any thread (the MLX owner thread logs too): they are queued under a lock,
and the sender, a task of the lifespan's task group, drains the queue at least once a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp_types import LoggingMessageNotification, LoggingMessageNotificationParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from server.redact import Redactor
from server.sessions import session_of

MAX_CHARS = 1000
MAX_FIELD_CHARS = 200
RATE_PER_S = 10.0
BURST = 20.0
QUEUE = 1024
SEND_DEADLINE_S = 2.0
DEFAULT_LEVEL = logging.WARNING
FORWARDED = ("model_gateway", "adapters")
_SELF = "model_gateway.client_logs"

MCP_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emergency": logging.CRITICAL,
}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def mcp_level(levelno: int) -> str:
    """The MCP name of a Python level (levels between two names take the lower one)."""
    for name, number in (("critical", 50), ("error", 40), ("warning", 30), ("info", 20)):
        if levelno >= number:
            return name
    return "debug"


class _Unbound:
    """The owner of a request that belongs to no session (stateless HTTP, an `initialize` not yet answered)."""


UNBOUND = _Unbound()
_current_owner: ContextVar[object | None] = ContextVar("model_gateway_log_owner", default=None)


@dataclass(eq=False)
class _Sink:
    owner: object
    session: Any  # the SDK's ServerSession of a recent request: its connection-wide channel carries the messages
    stamp: float
    level: int = DEFAULT_LEVEL
    tokens: float = BURST
    dropped: int = 0

    def take(self, now: float) -> bool:
        self.tokens = min(BURST, self.tokens + (now - self.stamp) * RATE_PER_S)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    @property
    def closed(self) -> bool:
        return bool(getattr(self.owner, "closed", False))


@dataclass
class _Entry:
    sink: _Sink
    level: str
    logger: str
    data: dict[str, Any] = field(default_factory=dict)


class ClientLogs:
    """Per-session log levels and the delivery of log records to sessions."""

    def __init__(
        self, redactor: Redactor, max_sessions: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._redactor = redactor
        self._max_sessions = max_sessions
        self._clock = clock
        self._sinks: OrderedDict[object, _Sink] = OrderedDict()
        self._queue: deque[_Entry] = deque()
        self._lock = threading.Lock()
        self._wake: anyio.Event | None = None
        self._loop_thread: int | None = None
        self.local = _Local()  # the one session of a stdio (or in-memory) connection
        self.handler = _Forwarder(self)
        self.handler.setLevel(DEFAULT_LEVEL)
        self._operator_level: int | None = None
        self._pinned: list[logging.Handler] = []

    # --- sessions -------------------------------------------------------------------------------

    def owner_of(self, request: Any) -> object:
        """Whose request this is: the HTTP session the guard bound it to, the local session, or UNBOUND."""
        if request is None:
            return self.local
        handle = session_of(request)
        return handle if handle is not None else UNBOUND

    def bind(self, owner: object, session: Any, refresh: bool) -> None:
        """Remember the session's channel (a new owner always; a known one when `refresh`)."""
        if owner is UNBOUND or getattr(session, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS:
            return  # the 2026 protocol carries log messages only on the stream of a request that asked
        with self._lock:
            sink = self._sinks.get(owner)
            if sink is None:
                self._sinks[owner] = _Sink(owner, session, self._clock())
                while len(self._sinks) > self._max_sessions:
                    self._sinks.popitem(last=False)
                self._levels_changed()
            elif refresh:
                sink.session = session
                self._sinks.move_to_end(owner)

    def set_level(self, owner: object, session: Any, level: str) -> None:
        self.bind(owner, session, refresh=True)
        with self._lock:
            sink = self._sinks.get(owner)
            if sink is not None:
                sink.level = MCP_LEVELS.get(level, logging.INFO)
                self._levels_changed()

    def level_of(self, owner: object) -> int | None:
        sink = self._sinks.get(owner)
        return sink.level if sink is not None else None

    def __len__(self) -> int:
        return len(self._sinks)

    @contextmanager
    def scoped(self, owner: object) -> Iterator[None]:
        """Records emitted inside go to `owner` only (UNBOUND: to nobody)."""
        token = _current_owner.set(owner)
        try:
            yield
        finally:
            _current_owner.reset(token)

    def _levels_changed(self) -> None:
        """The forwarder and the root logger let through what the most talkative session asked for."""
        lowest = min((s.level for s in self._sinks.values()), default=DEFAULT_LEVEL)
        self.handler.setLevel(lowest)
        if self._operator_level is not None:
            logging.getLogger().setLevel(min(lowest, self._operator_level))

    # --- records in -----------------------------------------------------------------------------

    def offer(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(FORWARDED) or record.name == _SELF:
            return
        owner = _current_owner.get()
        with self._lock:
            if owner is None:
                targets = [s for s in self._sinks.values() if record.levelno >= s.level]
            else:
                sink = self._sinks.get(owner)
                targets = [sink] if sink is not None and record.levelno >= sink.level else []
            if not targets:
                return
            entry_data = self._data(record)
            level, now = mcp_level(record.levelno), self._clock()
            for sink in targets:
                if not sink.take(now) or len(self._queue) >= QUEUE:
                    sink.dropped += 1
                    continue
                self._queue.append(_Entry(sink, level, record.name, entry_data))
        if self._wake is not None and threading.get_ident() == self._loop_thread:
            self._wake.set()

    def _data(self, record: logging.LogRecord) -> dict[str, Any]:
        """Redacted first, then cut: a secret straddling the cut is never half shown."""
        data: dict[str, Any] = {"message": _cut(self._redactor.text(record.getMessage()), MAX_CHARS)}
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_") or len(data) > 16:
                continue
            if isinstance(value, str):
                data[key] = _cut(self._redactor.text(value), MAX_FIELD_CHARS)
            elif value is None or isinstance(value, bool | int | float):
                data[key] = value
        return data

    # --- messages out ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Forward records until cancelled (a task of the lifespan's task group)."""
        self._loop_thread = threading.get_ident()
        root = logging.getLogger()
        self._operator_level = root.level
        # the root logger may go below the operator's level for a talkative session: handlers without
        # a level of their own (stderr) keep the operator's
        self._pinned = [h for h in root.handlers if h.level == logging.NOTSET]
        for h in self._pinned:
            h.setLevel(self._operator_level)
        root.addHandler(self.handler)
        self._levels_changed()
        try:
            while True:
                self._wake = anyio.Event()
                with anyio.move_on_after(1.0):
                    await self._wake.wait()
                await self._flush()
        finally:
            root.removeHandler(self.handler)
            root.setLevel(self._operator_level)
            for h in self._pinned:
                h.setLevel(logging.NOTSET)
            self._operator_level = None

    async def _flush(self) -> None:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
            for owner in [o for o, s in self._sinks.items() if s.closed]:
                del self._sinks[owner]
        for entry in batch:
            await self._deliver(entry.sink, entry.level, entry.logger, entry.data)
        now = self._clock()
        for sink in list(self._sinks.values()):
            if sink.dropped and sink.take(now):
                held, sink.dropped = sink.dropped, 0
                text = f"{held} log message(s) held back: at most {RATE_PER_S:g} per second are sent"
                await self._deliver(sink, "warning", _SELF, {"message": text})

    async def _deliver(self, sink: _Sink, level: str, logger: str, data: dict[str, Any]) -> None:
        if sink.closed:
            return
        params = LoggingMessageNotificationParams(level=level, data=data, logger=logger)  # type: ignore[arg-type]
        note = LoggingMessageNotification(params=params)
        try:
            with anyio.fail_after(SEND_DEADLINE_S):
                await sink.session.send_notification(note)
        except TimeoutError:
            sink.dropped += 1
        except Exception:  # the session is gone (closed stream) or broken: stop sending to it
            with self._lock:
                if self._sinks.get(sink.owner) is sink:
                    del self._sinks[sink.owner]
                    self._levels_changed()


class _Local:
    closed = False


class _Forwarder(logging.Handler):
    def __init__(self, logs: ClientLogs) -> None:
        super().__init__()
        self._logs = logs

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._logs.offer(record)
        except Exception:  # logging must never raise into the code that logged
            self.handleError(record)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_BIND_ON = frozenset({"notifications/initialized", "logging/setLevel", "ping", "tools/list"})


async def client_log_scope(ctx: Any, call_next: Any) -> Any:
    """MCP middleware: records a request emits go to its session; the session's channel is remembered.

    The channel is refreshed only from small requests: the SDK's per-request session object keeps
    its request (and that request's body) alive for as long as it is held.
    """
    logs = getattr(getattr(ctx, "lifespan_context", None), "client_logs", None)
    if not isinstance(logs, ClientLogs):
        return await call_next(ctx)
    owner = logs.owner_of(getattr(ctx, "request", None))
    logs.bind(owner, ctx.session, refresh=ctx.method in _BIND_ON)
    with logs.scoped(owner):
        return await call_next(ctx)
