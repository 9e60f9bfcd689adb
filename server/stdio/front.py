"""The fast start: answer the handshake from the cache while the SDK imports, then hand over.

Hosts spawn the server, then wait for `initialize` (or, at 2026-07-28, `server/discover`)
and the lists before they show its tools; importing the MCP SDK alone takes most of a
second. So `run` claims the client's pipes, starts a worker thread that imports and builds
the server, and meanwhile answers from `server.stdio.handshake` what it can: `initialize`,
`server/discover`, the first page of each list, and `ping`. Lines that break the protocol are
answered at once too (their answers need no server). Everything else is queued, parsed,
for the server; a line too large to parse cheaply here is queued unparsed and, like
everything after an `initialize` the cache cannot answer, waits for the server.

At the handover the server is fed what it must know: the `initialize` answered early (its
second answer is dropped), `notifications/initialized`, then everything queued. Requests
answered early are replayed under private ids (`VERIFY_ID_PREFIX`) so the recorder can
compare the real answers with the ones given.

The worker thread is the one exception to structured concurrency in the gateway: before the
handover there is no event loop to own a task, and the import it runs cannot be cancelled.
It is a daemon thread whose only output is the prepared server (or its exception), passed
back through `_Started`; the main thread always waits for it before serving, and a process
stopped during the window exits without waiting (`os._exit`: nothing has been opened yet).

Off with `serve --no-fast-start` or MODEL_GATEWAY_FAST_START=0. Standard library (and the
bounded parser) only, and no dataclasses (their import costs ~15 ms): everything here is on
the path from spawn to the first answer.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, Protocol

from server import envelope
from server.envelope import Message, Notification, Rejected, Request
from server.jsonparse import INLINE_MAX, JSONParseError, parse_small
from server.stdio.fd import claim, write_all
from server.stdio.handshake import LISTS, HandshakeCache, fingerprint, key, meta_version
from server.stdio.lines import LineSplitter, TooLong
from server.stdio.recorder import Recorder

VERIFY_ID_PREFIX = "model-gateway/verify/"
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
LINE_CAP_ENV = "MODEL_GATEWAY_MAX_LINE_BYTES"
QUEUE_MAX_BYTES = 8 * 1024 * 1024  # queued for the server; past this the front stops reading
SHUTTING_DOWN = "the server is shutting down; send it again to a new server"


def enabled(flag_off: bool, env: Mapping[str, str]) -> bool:
    return not flag_off and env.get("MODEL_GATEWAY_FAST_START", "1").strip().lower() not in {"0", "false", "no", "off"}


def line_cap(env: Mapping[str, str]) -> int | None:
    """The line cap set in the environment (it beats performance-config); None when unset or unusable."""
    value = env.get(LINE_CAP_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) >= 1024 else None


class Replay(NamedTuple):
    """One message for the server before it reads the wire: parsed already, or a line still to parse."""

    item: Message | bytes
    from_client: bool  # False: a private verification request


class Handover:
    """What the fast start leaves for the server."""

    def __init__(
        self, replay: list[Replay], splitter: LineSplitter, recorder: Recorder, stop: StopSignals, eof: bool = False
    ) -> None:
        self.replay = replay
        self.splitter = splitter  # mid-line, if the client was mid-line
        self.recorder = recorder
        self.stop = stop
        self.eof = eof  # the client already closed its end


class Pipes(NamedTuple):
    in_fd: int
    out_fd: int


class Serve(Protocol):
    """How the prepared server runs over the wire; returns the exit code."""

    def __call__(self, handover: Handover, pipes: Pipes) -> int: ...


Prepare = Callable[[], Serve]


class StopSignals:
    """SIGTERM/SIGINT before the event loop runs: noted, and the front's `select` woken up."""

    def __init__(self) -> None:
        self.received = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        with contextlib.suppress(OSError):  # full: a wake-up is already pending
            os.write(self._w, b"!")

    def fileno(self) -> int:
        return self._r


class Front:
    """Answers the handshake from the cache until the server is ready; queues everything else."""

    def __init__(self, cache: HandshakeCache, out_fd: int, splitter: LineSplitter) -> None:
        self.cache = cache
        self.out_fd = out_fd
        self.splitter = splitter
        self.queue: list[Replay] = []
        self.queued_bytes = 0
        self.init: Request | None = None  # the `initialize` answered early
        self.init_answer: dict[str, Any] | None = None
        self.initialized: Notification | None = None
        self.negotiated: str | None = None
        self.answered: list[tuple[Request, str, Any]] = []  # (request, cache key, answer)
        self.deferred = False  # from here on, everything waits for the server

    def feed(self, data: bytes) -> None:
        for line in self.splitter.feed(data):
            self._line(line)

    def close(self) -> None:
        for line in self.splitter.close():
            self._line(line)

    @property
    def full(self) -> bool:
        return self.queued_bytes >= QUEUE_MAX_BYTES

    def waiting(self) -> bool:
        """Whether anything the client sent still waits for the server."""
        return bool(self.queue) or self.splitter.holding > 0

    def _line(self, line: bytes | TooLong) -> None:
        if isinstance(line, TooLong):
            cap = self.splitter.max_line_bytes
            self._reject(envelope.too_long(line.size, cap, line.head, "limits.max_line_bytes"))
            return
        if self.deferred or len(line) > INLINE_MAX:
            self.deferred = True
            self._queue(line, len(line))
            return
        try:
            outcome = envelope.classify(parse_small(line))
        except JSONParseError as exc:
            self._reject(envelope.parse_failed(exc.reason, limit=exc.limit, head=line[:256]))
            return
        if isinstance(outcome, list):
            answers = envelope.batch_errors(outcome)
            if answers:
                self._send(envelope.encode(answers))
            return
        if isinstance(outcome, Rejected):
            self._reject(outcome)
            return
        if not self._answer(outcome):
            self._queue(outcome, len(line))

    def _answer(self, msg: Message) -> bool:
        """Answer `msg` from the cache if it can be; False when it must wait for the server."""
        if isinstance(msg, Notification):
            if msg.method == "notifications/initialized" and self.init is not None and self.initialized is None:
                self.initialized = msg
                return True
            return False
        if not isinstance(msg, Request):
            return False
        if msg.method == "ping":
            self._result(msg.id, {})
            return True
        if msg.method == "initialize" and self.init is None:
            return self._initialize(msg)
        if msg.method == "server/discover" or msg.method in LISTS:
            return self._list(msg)
        return False

    def _initialize(self, msg: Request) -> bool:
        params = msg.message.get("params")
        requested = params.get("protocolVersion") if isinstance(params, dict) else None
        answer = self.cache.answers.get(key("initialize", requested if isinstance(requested, str) else None))
        if not isinstance(answer, dict):
            self.deferred = True  # the server negotiates; nothing after it can be answered early
            return False
        self.init, self.init_answer, self.negotiated = msg, answer, answer["protocolVersion"]
        self._result(msg.id, answer)
        return True

    def _list(self, msg: Request) -> bool:
        params = msg.message.get("params")
        if isinstance(params, dict) and params.get("cursor") is not None:
            return False
        version = meta_version(params) or self.negotiated
        cache_key = key(msg.method, version)
        answer = self.cache.answers.get(cache_key)
        if answer is None or (version is None and msg.method != "server/discover"):
            return False
        self.answered.append((msg, cache_key, answer))
        self._result(msg.id, answer)
        return True

    def _queue(self, item: Message | bytes, size: int) -> None:
        self.queue.append(Replay(item, from_client=True))
        self.queued_bytes += size

    def _reject(self, rejected: Rejected) -> None:
        if rejected.error is not None:
            self._send(envelope.encode(rejected.error))

    def _result(self, request_id: envelope.RequestId, result: dict[str, Any]) -> None:
        self._send(envelope.encode({"jsonrpc": "2.0", "id": request_id, "result": result}))

    def _send(self, data: bytes) -> None:
        write_all(self.out_fd, data)

    def refuse_queued(self) -> None:
        """Stopping before the handover: every queued request is answered with a refusal."""
        for entry in self.queue:
            item = entry.item
            request_id = envelope.head_id(item[:256]) if isinstance(item, bytes) else None
            if isinstance(item, Request):
                request_id = item.id
            if request_id is not None:
                self._send(envelope.encode(envelope.refusal(request_id, SHUTTING_DOWN)))
        self.queue.clear()

    def handover(self, stop: StopSignals, eof: bool) -> Handover:
        declared = self.init_answer.get("capabilities") if self.init_answer is not None else None
        announced = frozenset(
            name
            for name, capability in (declared.items() if isinstance(declared, dict) else ())
            if isinstance(capability, dict) and capability.get("listChanged") is True
        )
        recorder = Recorder(self.cache, self.negotiated, announced)
        replay: list[Replay] = []
        if self.init is not None and self.init_answer is not None:
            replay.append(Replay(self.init, from_client=False))
            recorder.expect(self.init.id, key("initialize", _requested(self.init)), drop=True, given=self.init_answer)
            if self.initialized is not None:
                replay.append(Replay(self.initialized, from_client=False))
        for n, (request, cache_key, answer) in enumerate(self.answered):
            private = f"{VERIFY_ID_PREFIX}{n}"
            message = {**request.message, "id": private}
            replay.append(Replay(Request(private, request.method, message), from_client=False))
            modern = meta_version(request.message.get("params")) is not None
            recorder.expect(private, cache_key, drop=True, given=answer, modern=modern)
        replay.extend(self.queue)
        return Handover(replay, self.splitter, recorder, stop, eof)


def _requested(init: Request) -> str | None:
    params = init.message.get("params")
    version = params.get("protocolVersion") if isinstance(params, dict) else None
    return version if isinstance(version, str) else None


def fresh_handover(cache: HandshakeCache, max_line_bytes: int, stop: StopSignals | None = None) -> Handover:
    """What a server that starts without the fast start begins with: nothing read yet."""
    return Handover([], LineSplitter(max_line_bytes), Recorder(cache), stop or StopSignals())


class _Started:
    """What the worker thread hands back: the prepared server, or the exception that stopped it."""

    def __init__(self) -> None:
        self.serve: Serve | None = None
        self.error: BaseException | None = None


def run(options: Sequence[str], env: Mapping[str, str], cache_dir: Path, prepare: Prepare, *, fast: bool) -> int:
    """Serve stdio: `prepare()` imports and builds the server and returns how to run it over the wire."""
    in_fd, out_fd = claim()
    stop = StopSignals()
    stop.install()
    cap = line_cap(env) or DEFAULT_MAX_LINE_BYTES
    if not fast:
        serve = prepare()
        cache = HandshakeCache.load(cache_dir, fingerprint(options, env))  # recorded for the next start
        return serve(fresh_handover(cache, cap, stop), Pipes(in_fd, out_fd))
    # everything the first answers need is ready before the worker starts competing for the GIL
    cache = HandshakeCache.load(cache_dir, fingerprint(options, env))
    front = Front(cache, out_fd, LineSplitter(cap))
    started = _Started()
    done_r, done_w = os.pipe()

    def work() -> None:
        try:
            started.serve = prepare()
        except BaseException as exc:  # re-raised in the main thread
            started.error = exc
        finally:
            os.write(done_w, b".")

    threading.Thread(target=work, name="model-gateway-start", daemon=True).start()
    eof = _front_loop(front, in_fd, done_r, stop)
    os.close(done_r)
    os.close(done_w)
    if started.error is not None:
        raise started.error
    assert started.serve is not None
    return int(started.serve(front.handover(stop, eof), Pipes(in_fd, out_fd)))


def _front_loop(front: Front, in_fd: int, done_r: int, stop: StopSignals) -> bool:
    """Read and answer until the server is ready; True when the client closed its end meanwhile."""
    eof = False
    while True:
        watched = [done_r, stop.fileno()] + ([] if eof or front.full else [in_fd])
        ready, _, _ = select.select(watched, [], [])
        if stop.received:
            _leave(front.refuse_queued)
        if done_r in ready:
            return eof
        if in_fd not in ready:
            continue
        data = os.read(in_fd, 1 << 16)
        eof = not data
        try:
            if data:
                front.feed(data)
            else:
                front.close()
        except BrokenPipeError:
            os._exit(0)  # the client closed its end before reading the answer
        if eof and not front.waiting():
            os._exit(0)  # the client left with nothing left to answer; nothing was opened yet


def _leave(last: Callable[[], None]) -> None:
    with contextlib.suppress(OSError):
        last()
    os._exit(0)
