"""Log notifications for MCP clients: each session receives `notifications/message` at the level it set.

- A session's level is its own (`SessionState.log_level`, server/session.py). `logging/setLevel`
  changes what that session receives and nothing else (stderr keeps the operator's
  MODEL_GATEWAY_LOG_LEVEL). Until it sets one, a session receives warnings and worse.
- Where they go. A session is reached over its SDK connection's own channel, remembered when
  the client says `notifications/initialized` or sets a level (both handlers are registered by
  `register_log_handlers`). A record emitted while a tool call is served goes to that call's
  session only (the call path enters `ClientLogs.scoped()`: server/toolkit.py); a record emitted
  outside any call (an adapter found down, the audit sink failing) goes to every session at that
  level. Only the gateway's own loggers (`model_gateway.*`, `adapters.*`) are forwarded: library
  records can quote traffic of other sessions. A request without a session (stateless HTTP, the
  2026-07-28 envelope, whose log messages ride only the stream of a request that asked) gets none.
- Bounds. The text passes the same redactor as stderr and is then cut to MAX_CHARS; a session
  receives at most RATE_PER_S messages a second (bursts of BURST); what is held back is counted
  and reported in one message once there is room again. The queue to all sessions holds QUEUE
  entries; a client slow to read loses messages, never stalls the server. Sessions that ended
  are let go of at the next delivery; at most `max_sessions` are remembered (oldest first out).

Records may come from any thread (the MLX owner thread logs too): they are queued under a lock,
and the sender, a task of the state's task group, drains the queue at least once a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp_types import EmptyResult, NotificationParams, SetLevelRequestParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from server import sdk
from server.redact import Redactor
from server.session import SessionState, session_of

MAX_CHARS = 1000
MAX_FIELD_CHARS = 200
RATE_PER_S = 10.0
BURST = 20.0
QUEUE = 1024
SEND_DEADLINE_S = 2.0
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


class Channel(Protocol):
    """Where a session's notifications go: the SDK's `Connection` (best effort: it never raises)."""

    async def notify(self, method: str, params: Mapping[str, Any] | None) -> None: ...


class _Unbound:
    """The owner of a call that belongs to no session: what it logs goes to nobody."""


_UNBOUND = _Unbound()
_current: ContextVar[SessionState | _Unbound | None] = ContextVar("model_gateway_log_session", default=None)


@dataclass(eq=False)
class _Sink:
    session: SessionState
    channel: Channel
    stamp: float
    tokens: float = BURST
    dropped: int = 0

    def take(self, now: float) -> bool:
        self.tokens = min(BURST, self.tokens + (now - self.stamp) * RATE_PER_S)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class _Entry:
    sink: _Sink
    level: str
    logger: str
    data: dict[str, Any] = field(default_factory=dict)


class ClientLogs:
    """The sessions that receive log notifications, and the delivery of log records to them."""

    def __init__(
        self, redactor: Redactor, max_sessions: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._redactor = redactor
        self._max_sessions = max_sessions
        self._clock = clock
        self._sinks: OrderedDict[SessionState, _Sink] = OrderedDict()
        self._queue: deque[_Entry] = deque()
        self._lock = threading.Lock()
        self._wake: anyio.Event | None = None
        self._loop_thread: int | None = None
        self.handler = _Forwarder(self)
        self.handler.setLevel(logging.WARNING)
        self._operator_level: int | None = None
        self._pinned: list[logging.Handler] = []

    # --- sessions -------------------------------------------------------------------------------

    def attach(self, session: SessionState, channel: Channel) -> None:
        """Deliver to `session` over `channel` from now on (a newer channel replaces the one known)."""
        with self._lock:
            sink = self._sinks.get(session)
            if sink is None:
                self._sinks[session] = _Sink(session, channel, self._clock())
                while len(self._sinks) > self._max_sessions:
                    self._sinks.popitem(last=False)
            else:
                sink.channel = channel
                self._sinks.move_to_end(session)
            self._levels_changed()

    def set_level(self, session: SessionState, channel: Channel, level: str) -> None:
        session.log_level = MCP_LEVELS.get(level, logging.INFO)
        self.attach(session, channel)

    def __len__(self) -> int:
        return len(self._sinks)

    @contextmanager
    def scoped(self, session: SessionState | None) -> Iterator[None]:
        """Records emitted inside go to `session` only (None: to nobody)."""
        token = self.bind(session)
        try:
            yield
        finally:
            self.unbind(token)

    def bind(self, session: SessionState | None) -> Token[SessionState | _Unbound | None]:
        """`scoped()` without its generator, for the call path: `unbind()` the token in a `finally`."""
        return _current.set(_UNBOUND if session is None else session)

    def unbind(self, token: Token[SessionState | _Unbound | None]) -> None:
        _current.reset(token)

    def _levels_changed(self) -> None:
        """The forwarder and the root logger let through what the most talkative session asked for."""
        lowest = min((s.session.log_level for s in self._sinks.values()), default=logging.WARNING)
        self.handler.setLevel(lowest)
        if self._operator_level is not None:
            logging.getLogger().setLevel(min(lowest, self._operator_level))

    # --- records in -----------------------------------------------------------------------------

    def offer(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(FORWARDED) or record.name == _SELF:
            return
        owner = _current.get()
        with self._lock:
            if owner is None:
                targets = [s for s in self._sinks.values() if record.levelno >= s.session.log_level]
            elif isinstance(owner, SessionState) and record.levelno >= owner.log_level:
                sink = self._sinks.get(owner)
                targets = [sink] if sink is not None else []
            else:
                targets = []
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
        """Forward records until cancelled (a task of the state's task group)."""
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
            ended = [s for s in self._sinks if s.closed]
            for session in ended:
                del self._sinks[session]
            if ended:
                self._levels_changed()
        for entry in batch:
            await self._deliver(entry.sink, entry.level, entry.logger, entry.data)
        now = self._clock()
        for sink in list(self._sinks.values()):
            if sink.dropped and sink.take(now):
                held, sink.dropped = sink.dropped, 0
                text = f"{held} log message(s) held back: at most {RATE_PER_S:g} per second are sent"
                await self._deliver(sink, "warning", _SELF, {"message": text})

    async def _deliver(self, sink: _Sink, level: str, logger: str, data: dict[str, Any]) -> None:
        if sink.session.closed:
            return
        try:
            with anyio.fail_after(SEND_DEADLINE_S):
                await sink.channel.notify("notifications/message", {"level": level, "logger": logger, "data": data})
        except TimeoutError:
            sink.dropped += 1


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


def register_log_handlers(server: MCPServer[Any]) -> None:
    """`logging/setLevel` sets the calling session's level; `notifications/initialized` opens its channel.

    The SDK leaves `logging/setLevel` to the application; the low-level server is where it
    documents re-providing it. Neither changes anything for a request without a session.
    """

    async def set_level(ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
        found = _session(ctx)
        if found is not None:
            logs, session = found
            logs.set_level(session, sdk.connection_of(ctx), str(params.level))
        return EmptyResult()

    async def initialized(ctx: ServerRequestContext[Any, Any], params: NotificationParams) -> None:
        found = _session(ctx)
        if found is not None:
            logs, session = found
            logs.attach(session, sdk.connection_of(ctx))

    sdk.add_request_handler(server, "logging/setLevel", SetLevelRequestParams, set_level)
    sdk.add_notification_handler(server, "notifications/initialized", NotificationParams, initialized)


def _session(ctx: ServerRequestContext[Any, Any]) -> tuple[ClientLogs, SessionState] | None:
    """The state's client logs and the request's session, when it has one that log notifications can reach."""
    state = ctx.lifespan_context
    logs = getattr(state, "client_logs", None)
    if not isinstance(logs, ClientLogs) or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    session = session_of(state, ctx)
    return (logs, session) if session is not None else None
