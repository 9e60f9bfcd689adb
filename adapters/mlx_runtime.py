"""The MLX owner thread: one real thread holds every MLX object of an adapter and runs jobs from a queue.

MLX streams are per thread and a lazy array made in one thread cannot be evaluated in another, so the
event loop never touches MLX: it submits a job and awaits an anyio.Event that the owner thread sets
through the loop's own thread-safe scheduler (non-blocking, so the owner thread never waits on the loop).

Long jobs call JobContext.should_stop() at bounded intervals (generation: between prompt chunks and
between tokens; a model load: while its files are checked); that runs any queued short jobs (embeddings,
reranks) first, so a long job does not hold up a 20 ms embedding. A short job can say when it may not run
inside another job (`runnable`): an embedding for a model that the outer job is still loading waits.

mlx is imported on the owner thread only, so importing this module costs nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from adapters.errors import AdapterUnavailableError
from adapters.types import ProgressFn

T = TypeVar("T")
log = logging.getLogger(__name__)

# (done, total, message) posted from the owner thread; delivered to the loop without blocking.
ReportFn = Callable[[float, float | None, str | None], None]


class JobCancelledError(Exception):
    """The caller went away before the job started."""


def _no_report(done: float, total: float | None, message: str | None) -> None:
    return None


def _never() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Steering:
    """How the caller steers a generation on the owner thread.

    `should_stop` is polled at every yield point (it serves the jobs waiting, then says whether the caller is
    gone); `on_token(delta, n)` hears each new piece of text; `deadline` is a time.monotonic() value.
    """

    should_stop: Callable[[], bool] = _never
    on_token: Callable[[str, int], None] | None = None
    deadline: float | None = None


@dataclass(eq=False)
class JobContext:
    """What a job sees of the runtime, on the owner thread. `report` posts progress to the caller."""

    _runtime: OwnerThread
    report: ReportFn = _no_report
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def should_stop(self) -> bool:
        """Between tokens: serve queued short jobs, then say whether the caller is gone."""
        self._runtime.checkpoint()
        return self._cancel.is_set() or self._runtime.closing

    def serve_others(self) -> bool:
        """Inside work that goes on whoever waits for it (a model load): serve queued short jobs; True on close."""
        self._runtime.checkpoint()
        return self._runtime.closing


@dataclass(eq=False)
class _Job(Generic[T]):
    fn: Callable[[JobContext], T]
    interleavable: bool
    ctx: JobContext
    on_done: Callable[[], None]
    runnable: Callable[[], bool] | None = None  # checked on the owner thread before it runs inside another job
    result: T | None = None
    error: BaseException | None = None


def _call_soon(token: anyio.lowlevel.EventLoopToken, fn: Callable[..., object], *args: object) -> None:
    """Schedule fn on the loop from another thread; a loop that has finished is not an error here."""
    with contextlib.suppress(anyio.RunFinishedError, RuntimeError):
        token.backend_class.run_sync_soon(fn, args, token.native_token)


class OwnerThread:
    def __init__(
        self,
        name: str,
        *,
        on_exit: Callable[[], None] | None = None,
        before_mlx: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self._before_mlx = before_mlx
        self.closing = False
        self._on_exit = on_exit
        self._queue: deque[_Job[Any]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running: _Job[Any] | None = None
        self._in_checkpoint = False
        self._atexit: Callable[[], None] | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self.closing:
                return
            # Daemon so a stuck job cannot hang interpreter exit; the atexit hook still stops it cleanly
            # (clear_streams) on a normal exit, since atexit runs before daemon threads are torn down.
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    def submit(self, fn: Callable[[JobContext], T], *, interleavable: bool = False) -> JobContext:
        """Queue a job whose result nobody awaits (background loads)."""
        ctx = JobContext(self)
        self._put(_Job(fn, interleavable, ctx, lambda: None))
        return ctx

    async def run(
        self,
        fn: Callable[[JobContext], T],
        *,
        interleavable: bool = False,
        progress: ProgressFn | None = None,
        runnable: Callable[[], bool] | None = None,
    ) -> T:
        """Run fn(ctx) on the owner thread and return its result; cancelling the caller cancels the job."""
        if progress is None:
            return await self._await(fn, interleavable, _no_report, runnable)
        send, recv = anyio.create_memory_object_stream[tuple[float, float | None, str | None]](math.inf)
        token = anyio.lowlevel.current_token()

        def post(item: tuple[float, float | None, str | None]) -> None:
            # After the call returned a late report has nowhere to go.
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                send.send_nowait(item)

        def report(done: float, total: float | None, message: str | None) -> None:
            _call_soon(token, post, (done, total, message))

        result: list[T] = []
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pump_progress, recv, progress)
            try:
                result.append(await self._await(fn, interleavable, report, runnable))
            except Exception as exc:  # raised after the group, so callers see it unwrapped
                error = exc
            finally:
                send.close()
        if error is not None:
            raise error
        return result[0]

    async def _await(
        self, fn: Callable[[JobContext], T], interleavable: bool, report: ReportFn, runnable: Callable[[], bool] | None
    ) -> T:
        token = anyio.lowlevel.current_token()
        done = anyio.Event()
        ctx = JobContext(self, report)
        job: _Job[T] = _Job(fn, interleavable, ctx, lambda: _call_soon(token, done.set), runnable)
        self._put(job)
        try:
            await done.wait()
        except BaseException:
            job.ctx._cancel.set()
            raise
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _put(self, job: _Job[Any]) -> None:
        with self._cond:
            if self.closing:
                job.error = AdapterUnavailableError(f"MLX runtime {self.name!r} is closed")
                job.on_done()
                return
            self._queue.append(job)
            self._cond.notify()
        self.start()

    def checkpoint(self) -> None:
        """On the owner thread inside a long job: run the short jobs waiting behind it."""
        if self._in_checkpoint:
            return
        with self._cond:
            ready = [job for job in self._queue if job.interleavable and (job.runnable is None or job.runnable())]
            for job in ready:
                self._queue.remove(job)
        if not ready:
            return
        self._in_checkpoint = True
        try:
            for job in ready:
                self._execute(job)
        finally:
            self._in_checkpoint = False

    def _next(self) -> _Job[Any] | None:
        """The oldest short job if any, else the oldest job: an embedding never waits behind a model load."""
        with self._cond:
            while not self._queue and not self.closing:
                self._cond.wait()
            if self.closing:
                return None
            job = next((j for j in self._queue if j.interleavable), self._queue[0])
            self._queue.remove(job)
            return job

    def _execute(self, job: _Job[Any]) -> None:
        if job.ctx.cancelled():
            job.error = JobCancelledError()
        else:
            try:
                job.result = job.fn(job.ctx)
            except BaseException as exc:  # handed to the awaiting task, which re-raises it there
                job.error = exc
        job.on_done()

    def _main(self) -> None:
        try:
            if self._before_mlx is not None:
                self._before_mlx()
            import mlx.core as mx
        except ImportError as exc:
            self._fail_all(AdapterUnavailableError(f"MLX is not installed: {exc}"))
            return
        try:
            while (job := self._next()) is not None:
                self._running = job
                self._execute(job)
                self._running = None
        finally:
            if self._on_exit is not None:
                self._on_exit()
            # Without this the process aborts at exit at random (rc 134) after MLX work in a non-main thread.
            mx.clear_streams()
            self._fail_all(AdapterUnavailableError(f"MLX runtime {self.name!r} is closed"))

    def _fail_all(self, error: Exception) -> None:
        with self._cond:
            self.closing = True
            pending, self._queue = list(self._queue), deque()
        for job in pending:
            job.error = error
            job.on_done()

    def _request_close(self) -> threading.Thread | None:
        with self._cond:
            self.closing = True
            running = self._running
            self._cond.notify_all()
        if running is not None:
            running.ctx._cancel.set()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None
        return self._thread

    def close_sync(self, timeout: float | None = None) -> None:
        thread = self._request_close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    async def aclose(self) -> None:
        """Stop the thread after its current job and join it. Idempotent."""
        thread = self._request_close()
        if thread is not None and thread.is_alive():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join)
        self._fail_all(AdapterUnavailableError(f"MLX runtime {self.name!r} is closed"))


def _close_at_exit(ref: weakref.ref[OwnerThread]) -> None:
    runtime = ref()
    if runtime is not None:
        runtime.close_sync(timeout=10.0)


async def _pump_progress(
    recv: MemoryObjectReceiveStream[tuple[float, float | None, str | None]], progress: ProgressFn
) -> None:
    """Forward reports to the caller's progress hook, skipping stale ones when the hook is slow."""
    async with recv:
        async for item in recv:
            while True:
                try:
                    item = recv.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            try:
                await progress(*item)
            except Exception:  # a failing progress hook must not fail the call it reports on
                log.debug("progress hook failed", exc_info=True)
