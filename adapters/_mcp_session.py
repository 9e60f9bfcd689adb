"""One client session to a downstream MCP server, owned by a dedicated task.

anyio requires a context manager to be exited by the task that entered it, and
an `mcp` Client (its transport, its process, its task groups) is such a context
manager. Calls arrive on many short-lived request tasks, so none of them can own
the session. A `DownstreamSession` therefore runs the Client inside its own
task, from open to close; other tasks only send requests through the entered
Client, which the mcp dispatcher allows from any task of the same event loop.
The owner task runs in the task group the server gives adapters (`AdapterContext.tasks`,
the application state's), so closing the state cancels it even if nobody closes the adapter.

When the transport reaches end of stream (the process died, the server hung
up), the owner task leaves the Client at once, so the child is reaped and the
next call opens a fresh session instead of failing on a dead one.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
from mcp.client import Client
from mcp.client._transport import Transport, TransportStreams
from mcp.shared.message import SessionMessage

from adapters.base import TaskOwner
from adapters.errors import AdapterError, AdapterTimeoutError, AdapterUnavailableError

TransportFactory = Callable[[], Transport]


class _WatchedReadStream:
    """A read stream that reports end of stream through an event."""

    def __init__(self, inner: Any, lost: anyio.Event) -> None:
        self._inner = inner
        self._lost = lost

    @property
    def last_context(self) -> contextvars.Context | None:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            item: SessionMessage | Exception = await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._lost.set()
            raise
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _WatchedReadStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def _watched(transport: Transport, lost: anyio.Event) -> AsyncIterator[TransportStreams]:
    async with transport as (read_stream, write_stream):
        yield _WatchedReadStream(read_stream, lost), write_stream


class DownstreamSession:
    """A session opened in the background and usable from any task until it is lost or stopped."""

    def __init__(
        self, make_transport: TransportFactory, tasks: TaskOwner, *, open_timeout_s: float, describe: str
    ) -> None:
        self._make_transport = make_transport
        self._tasks = tasks
        self._open_timeout_s = open_timeout_s
        self._describe = describe
        self._client: Client | None = None
        self._error: AdapterError | None = None
        self._ready = anyio.Event()
        self._stop = anyio.Event()
        self._lost = anyio.Event()
        self._done = anyio.Event()

    def start(self) -> None:
        """Start the owner task; when no task group takes it, the session is failed, never run unowned.

        A fresh contextvars context keeps the calling request's variables out of a session that
        outlives it and serves other requests.
        """
        try:
            self._tasks.create_task(self._own(), name=f"session {self._describe}", context=contextvars.Context())
        except RuntimeError:
            self._error = AdapterUnavailableError(f"{self._describe}: no running task group can own the session")
            self._ready.set()
            self._done.set()

    @property
    def usable(self) -> bool:
        """False once the session failed to open, was lost, or was asked to stop."""
        return self._error is None and not self._lost.is_set() and not self._stop.is_set()

    @property
    def finished(self) -> bool:
        """True once the owner task has left the Client (the transport and any child are gone)."""
        return self._done.is_set()

    async def client(self) -> Client:
        """The open Client; waits for the open under the caller's own deadline."""
        await self._ready.wait()
        if self._error is not None:
            raise self._error
        if self._client is None or not self.usable:
            raise AdapterUnavailableError(f"{self._describe}: session is closed")
        return self._client

    async def aclose(self) -> None:
        """Stop the owner task and wait until the transport (and any child process) is gone."""
        self._stop.set()
        with anyio.CancelScope(shield=True):
            await self._done.wait()

    def drop(self) -> None:
        """Ask the owner to close without waiting; the next call opens a new session."""
        self._stop.set()

    async def _own(self) -> None:
        try:
            await self._run()
        except Exception as exc:
            self._error = _open_error(exc, self._describe)
        finally:
            self._client = None
            self._ready.set()
            self._done.set()

    async def _run(self) -> None:
        with anyio.CancelScope() as scope:
            scope.deadline = anyio.current_time() + self._open_timeout_s
            transport = _watched(self._make_transport(), self._lost)
            async with Client(transport) as client:
                scope.deadline = math.inf
                self._client = client
                self._ready.set()
                await _first_of(self._stop, self._lost)
        if scope.cancelled_caught and not self._ready.is_set():
            raise AdapterTimeoutError(f"{self._describe}: opening the session took over {self._open_timeout_s:g} s")


async def _first_of(*events: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


def _open_error(exc: BaseException, describe: str) -> AdapterError:
    if isinstance(exc, AdapterError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = exc.exceptions
        return _open_error(leaves[0], describe) if len(leaves) == 1 else _unavailable(exc, describe)
    return _unavailable(exc, describe)


def _unavailable(exc: BaseException, describe: str) -> AdapterUnavailableError:
    return AdapterUnavailableError(f"{describe}: cannot open the session ({type(exc).__name__})")
