"""One stdio session after the handover: parse once, feed the SDK, write its answers, stop gracefully.

    client --lines--> reader --parse+classify--> Request/Notification/Reply --SessionMessage--> SDK
    client <--lines-- writer <------ SDK answers, protocol errors, refusals, list_changed --------'

Every line is parsed once (`server.jsonparse`; large lines in a worker thread), checked once
(`server.envelope`), and the parsed object is what the SDK receives: no transport layer below
it reads the JSON again. Lines that break the protocol are answered here and never reach it.

Requests the SDK has not answered yet are counted (at most `MAX_PENDING`, `MAX_PENDING_BYTES`
of them; more are refused as busy). That count is what a graceful stop waits on: on SIGTERM or
SIGINT, or when the client closes its end, new calls are refused, the ones in flight get up
to `grace_s` to finish (their audit records with them), and only then does the SDK see the end
of its input, cancel what is left (each such request is answered with an error) and close the
application state. A second signal skips the rest of the wait.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
from collections import Counter
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.message import SessionMessage
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged
from mcp_types import JSONRPCError, JSONRPCMessage, JSONRPCResponse, jsonrpc_message_adapter
from pydantic import ValidationError

from server import envelope, sdk
from server.envelope import Message, Notification, Rejected, Request, RequestId
from server.jsonparse import INLINE_MAX, JSONParseError, parse_large, parse_small
from server.loopwatch import LoopWatch
from server.stdio.front import SHUTTING_DOWN, Handover, Pipes
from server.stdio.lines import TooLong
from server.stdio.wire import LineReader, LineWriter

log = logging.getLogger("model_gateway.stdio")

MAX_PENDING = 1024
MAX_PENDING_BYTES = 64 * 1024 * 1024
OUT_BUFFER = 64
_POSITION = re.compile(r" at (?:line [0-9]+ column [0-9]+|byte [0-9]+)")
_LOG_EVERY = 1000  # a repeated protocol error is logged once, then once per this many
# what a stopping server refuses: new work. Lists and pings are still answered, since a client may
# need them to finish a call in flight (the SDK's client fetches a tool's output schema after its result)
_WORK = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete"})

Outgoing = SessionMessage | bytes
_LIST_EVENTS: dict[str, type[ToolsListChanged | ResourcesListChanged | PromptsListChanged]] = {
    "tools": ToolsListChanged,
    "resources": ResourcesListChanged,
    "prompts": PromptsListChanged,
}
_State = TypeVar("_State")
_AS_IS = (
    orjson.OPT_APPEND_NEWLINE
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


@dataclass(frozen=True)
class StdioOptions:
    max_line_bytes: int  # the effective cap: environment, else performance-config
    grace_s: float = 10.0
    loop_watch: bool = False


class Session:
    def __init__(self, handover: Handover, pipes: Pipes, options: StdioOptions) -> None:
        self.handover = handover
        self.recorder = handover.recorder
        self.options = options
        handover.splitter.max_line_bytes = options.max_line_bytes
        self.reader = LineReader(pipes.in_fd, handover.splitter, eof=handover.eof)
        self.writer = LineWriter(pipes.out_fd)
        self.pending: Counter[RequestId] = Counter()
        self.pending_sizes: dict[RequestId, int] = {}
        self.pending_bytes = 0
        self.stopping = False
        self.client_gone = False
        self.sdk_done = False
        self._closing = anyio.Event()  # end of input, a signal, or the client gone
        self._changed = anyio.Event()  # a pending request was answered
        self._save = anyio.Event()
        self._drain_scope: anyio.CancelScope | None = None
        self._parse_limiter = anyio.CapacityLimiter(1)  # one large line in memory at a time
        self._errors: Counter[str] = Counter()
        self._bus: SubscriptionBus | None = None

    async def run(self, server: MCPServer[_State]) -> None:
        lowlevel = sdk.lowlevel(server)  # the SDK's own run_stdio_async reaches it the same way
        init = lowlevel.create_initialization_options(
            NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        )
        to_sdk, from_wire = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        out, outgoing = anyio.create_memory_object_stream[Outgoing](OUT_BUFFER)
        async with anyio.create_task_group() as tg:
            writer_done = anyio.Event()
            tg.start_soon(self._write, outgoing, writer_done)
            tg.start_soon(self._signals)
            tg.start_soon(self._saver)
            if self.options.loop_watch:
                tg.start_soon(LoopWatch().run)
            self._bus = sdk.subscriptions(server)  # where 2026-era list changes are published
            tg.start_soon(self._inbound, to_sdk, out.clone())
            try:
                await lowlevel.run(from_wire, out, init)
            finally:
                self._end()
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await writer_done.wait()
                tg.cancel_scope.cancel()
        if self.recorder.dirty:
            await anyio.to_thread.run_sync(self._save_cache)

    # --- inbound ---------------------------------------------------------------------------------

    async def _inbound(
        self, to_sdk: MemoryObjectSendStream[SessionMessage | Exception], out: MemoryObjectSendStream[Outgoing]
    ) -> None:
        async with to_sdk, out, anyio.create_task_group() as tg:
            tg.start_soon(self._read_all, to_sdk, out)
            await self._closing.wait()
            await self._drain()
            tg.cancel_scope.cancel()
        # `to_sdk` is closed: the SDK cancels what is still running, answers it, and ends

    async def _read_all(
        self, to_sdk: MemoryObjectSendStream[SessionMessage | Exception], out: MemoryObjectSendStream[Outgoing]
    ) -> None:
        for entry in self.handover.replay:
            await self._deliver(entry.item, entry.from_client, to_sdk, out)
        self.handover.replay.clear()
        while (line := await self.reader.next()) is not None:
            await self._deliver(line, True, to_sdk, out)
        self._closing.set()

    async def _deliver(
        self,
        item: Message | bytes | TooLong,
        from_client: bool,
        to_sdk: MemoryObjectSendStream[SessionMessage | Exception],
        out: MemoryObjectSendStream[Outgoing],
    ) -> None:
        outcome = await self._outcome(item)
        if isinstance(outcome, list):
            answers = envelope.batch_errors(outcome)
            self._note("a batch")
            if answers:
                await out.send(envelope.encode(answers))
            return
        if isinstance(outcome, Rejected):
            self._note(outcome.reason)
            if outcome.error is not None:
                await out.send(envelope.encode(outcome.error))
            return
        if isinstance(outcome, Request):
            refusal = self._admit(outcome, len(item) if isinstance(item, bytes) else 0)
            if refusal is not None:
                await out.send(envelope.encode(envelope.refusal(outcome.id, refusal)))
                return
            if from_client:
                self.recorder.inbound(outcome)
        elif isinstance(outcome, Notification) and outcome.method == "notifications/cancelled":
            self._cancelled(outcome)
        await self._to_sdk(outcome, to_sdk, out)

    async def _outcome(self, item: Message | bytes | TooLong) -> envelope.Outcome | list[envelope.Outcome]:
        if isinstance(item, TooLong):
            return envelope.too_long(item.size, self.options.max_line_bytes, item.head, "limits.max_line_bytes")
        if not isinstance(item, bytes):
            return item
        try:
            if len(item) <= INLINE_MAX:
                value = parse_small(item)
            else:  # off the loop: the iterative parser gives the GIL up between tokens
                value = await anyio.to_thread.run_sync(parse_large, item, limiter=self._parse_limiter)
        except JSONParseError as exc:
            return envelope.parse_failed(exc.reason, limit=exc.limit, head=item[:256])
        return envelope.classify(value)

    async def _to_sdk(
        self,
        msg: Message,
        to_sdk: MemoryObjectSendStream[SessionMessage | Exception],
        out: MemoryObjectSendStream[Outgoing],
    ) -> None:
        try:
            typed = jsonrpc_message_adapter.validate_python(msg.message, by_name=False)
        except ValidationError:
            self._note("a message the SDK's envelope model refuses")
            if isinstance(msg, Request):
                self._answered(msg.id)
                error = envelope.error_response(msg.id, envelope.INVALID_REQUEST, "Invalid request: malformed envelope")
                await out.send(envelope.encode(error))
            return
        await to_sdk.send(SessionMessage(typed))

    def _admit(self, request: Request, size: int) -> str | None:
        """None when the request may go on; otherwise why it is refused (it is then answered at once)."""
        if self.stopping and request.method in _WORK:
            return SHUTTING_DOWN
        if len(self.pending) >= MAX_PENDING or self.pending_bytes + size > MAX_PENDING_BYTES:
            return f"busy: {MAX_PENDING} requests or {MAX_PENDING_BYTES} bytes already in flight; retry shortly"
        self.pending[request.id] += 1
        self.pending_sizes[request.id] = self.pending_sizes.get(request.id, 0) + size
        self.pending_bytes += size
        return None

    def _cancelled(self, note: Notification) -> None:
        """A request the client cancelled is never answered (MCP): it no longer counts as in flight."""
        params = note.message.get("params")
        request_id = params.get("requestId") if isinstance(params, dict) else None
        if isinstance(request_id, str | int) and request_id in self.pending:
            self._answered(request_id)

    def _answered(self, request_id: object) -> None:
        if not isinstance(request_id, str | int) or request_id not in self.pending:
            return
        self.pending[request_id] -= 1
        if self.pending[request_id] <= 0:
            del self.pending[request_id]
            self.pending_bytes -= self.pending_sizes.pop(request_id, 0)
        self._changed.set()

    def _note(self, reason: str) -> None:
        """Protocol errors are logged by kind, never with the content; a flood becomes a count."""
        kind = _POSITION.sub("", reason)[:80]
        if len(self._errors) > 64:
            self._errors.clear()
        self._errors[kind] += 1
        n = self._errors[kind]
        if n == 1 or n % _LOG_EVERY == 0:
            log.warning("stdio: refused %s (%d so far)", kind, n)

    # --- outbound --------------------------------------------------------------------------------

    async def _write(self, outgoing: MemoryObjectReceiveStream[Outgoing], done: anyio.Event) -> None:
        try:
            async with outgoing:
                async for item in outgoing:
                    data = item if isinstance(item, bytes) else self._encode(item)
                    if self.recorder.to_publish:
                        await self._publish()
                    if data and not self.client_gone:
                        try:
                            await self.writer.write(data)
                        except OSError:  # EPIPE and the like: nobody reads any more
                            self._gone()
        finally:
            done.set()

    def _encode(self, item: SessionMessage) -> bytes:
        msg = item.message
        data = _dump(msg)
        if not isinstance(msg, JSONRPCResponse | JSONRPCError) or msg.id is None:
            return data
        self._answered(msg.id)
        if not self.recorder.watching(msg.id):
            return data
        # the SDK hands results over already in their JSON form: compared as they are, nothing is parsed again
        send, extra = self.recorder.outbound(msg.id, msg.result if isinstance(msg, JSONRPCResponse) else None)
        if self.recorder.dirty:
            self._save.set()
        return (data if send else b"") + extra

    async def _publish(self) -> None:
        for capability in self.recorder.to_publish:
            event = _LIST_EVENTS[capability]()
            if self._bus is not None:
                await self._bus.publish(event)
        self.recorder.to_publish.clear()

    # --- stopping --------------------------------------------------------------------------------

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            if self.handover.stop.received:
                self._stop("a stop signal")
            async for signum in signals:
                if self.stopping and self._drain_scope is not None:
                    log.warning("stdio: second stop signal: calls still running are cancelled")
                    self._drain_scope.cancel()
                else:
                    self._stop(signal.Signals(signum).name)

    def _stop(self, why: str) -> None:
        self.stopping = True
        log.info(
            "stdio: stopping (%s): %d requests in flight, up to %.0f s to finish",
            why,
            len(self.pending),
            self.options.grace_s,
        )
        self._closing.set()

    def _gone(self) -> None:
        self.client_gone = self.stopping = True
        self._closing.set()
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    def _end(self) -> None:
        """The SDK has ended: nothing more goes to it, nothing is waited for."""
        self.stopping = self.sdk_done = True
        self._closing.set()
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    async def _drain(self) -> None:
        self.stopping = True
        with anyio.move_on_after(0 if self.client_gone or self.sdk_done else self.options.grace_s) as scope:
            self._drain_scope = scope
            while self.pending:
                self._changed = anyio.Event()
                await self._changed.wait()
        if self.pending:
            log.warning("stdio: %d requests still running at the end of the grace period: cancelled", len(self.pending))

    async def _saver(self) -> None:
        while True:
            await self._save.wait()
            self._save = anyio.Event()
            await anyio.to_thread.run_sync(self._save_cache)

    def _save_cache(self) -> None:
        self.recorder.dirty = False
        self.recorder.cache.save()


def _dump(msg: JSONRPCMessage) -> bytes:
    """One JSON line. A result (already in its JSON form when the SDK hands it over) is written by orjson,
    ~2.5x faster than the model's own dump and the same JSON; any value orjson would render its own way
    (dataclasses, datetimes, subclasses, non-string keys, huge ints) falls back to the model's dump."""
    if type(msg) is JSONRPCResponse and msg.id is not None:
        with contextlib.suppress(TypeError):
            return orjson.dumps({"jsonrpc": msg.jsonrpc, "id": msg.id, "result": msg.result}, option=_AS_IS)
    return msg.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
