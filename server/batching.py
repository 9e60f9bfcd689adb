"""Coalesces concurrent embed calls per (adapter, model, dimensions).

Continuous batching: a call that finds its key idle is sent at once, in its own
task (no added latency at low load); calls that arrive while a batch is
upstream queue up and leave together as the next batch, bounded by a text count and an estimated
token budget. One drain task per busy key runs in the coalescer's task group,
so a caller that gives up (deadline, cancellation) never cancels the batch its
neighbours are waiting on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from adapters.base import Adapter
from adapters.types import EmbedRequest, EmbedResult, Usage
from server.manifests import BatchingConfig

BatchObserver = Callable[[str, int, int], None]  # adapter, calls in batch, texts in batch
Key = tuple[str, str, int | None]


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1


@dataclass(eq=False)
class _Pending:
    texts: tuple[str, ...]
    done: anyio.Event = field(default_factory=anyio.Event)
    result: EmbedResult | None = None
    error: BaseException | None = None
    abandoned: bool = False


class EmbedCoalescer:
    def __init__(self, config: BatchingConfig, deadline_s: float, on_batch: BatchObserver | None = None) -> None:
        self.config = config
        self.deadline_s = deadline_s
        self._on_batch = on_batch
        self._queues: dict[Key, deque[_Pending]] = {}
        self._busy: set[Key] = set()  # keys with upstream work in flight (a lone call or a drain task)
        self._tg: TaskGroup | None = None
        self.batches = 0

    async def __aenter__(self) -> EmbedCoalescer:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        result = await self._tg.__aexit__(et, e, tb)
        self._tg = None
        return result

    async def embed(
        self, adapter: Adapter, req: EmbedRequest, call: Callable[[EmbedRequest], Awaitable[EmbedResult]]
    ) -> EmbedResult:
        """Embed through the coalescer; `call` performs the upstream request for a (merged) batch."""
        if self._tg is None or not self.config.coalesce or len(req.texts) >= self.config.max_batch_texts:
            return await call(req)
        key: Key = (adapter.info.name, req.model, req.dimensions)
        if key not in self._busy and self.config.max_wait_ms == 0:
            # idle key: go at once, in the caller's own task; whoever arrives meanwhile queues
            self._busy.add(key)
            try:
                result = await call(req)
            finally:
                self._release(key, call)
            self._observe(key[0], 1, len(req.texts))
            return result
        return await self._queued(key, req, call)

    async def _queued(
        self, key: Key, req: EmbedRequest, call: Callable[[EmbedRequest], Awaitable[EmbedResult]]
    ) -> EmbedResult:
        pending = _Pending(req.texts)
        self._queues.setdefault(key, deque()).append(pending)
        if key not in self._busy:
            self._busy.add(key)
            self._start_drain(key, call)
        try:
            await pending.done.wait()
        except BaseException:
            pending.abandoned = True
            raise
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _release(self, key: Key, call: Callable[[EmbedRequest], Awaitable[EmbedResult]]) -> None:
        """A lone call finished: hand the calls that queued behind it to a drain task, or free the key."""
        if self._queues.get(key):
            self._start_drain(key, call)
        else:
            self._busy.discard(key)

    def _start_drain(self, key: Key, call: Callable[[EmbedRequest], Awaitable[EmbedResult]]) -> None:
        assert self._tg is not None
        self._tg.start_soon(self._drain, key, self._queues[key], call)

    def _observe(self, adapter: str, calls: int, texts: int) -> None:
        self.batches += 1
        if self._on_batch is not None:
            self._on_batch(adapter, calls, texts)

    def _take(self, queue: deque[_Pending]) -> list[_Pending]:
        batch: list[_Pending] = []
        texts = tokens = 0
        while queue:
            p = queue[0]
            if p.abandoned:
                queue.popleft()
                continue
            cost = sum(estimate_tokens(t) for t in p.texts)
            too_big = texts + len(p.texts) > self.config.max_batch_texts or tokens + cost > self.config.token_budget
            if batch and too_big:
                break
            batch.append(queue.popleft())
            texts += len(p.texts)
            tokens += cost
        return batch

    async def _drain(
        self, key: Key, queue: deque[_Pending], call: Callable[[EmbedRequest], Awaitable[EmbedResult]]
    ) -> None:
        try:
            if self.config.max_wait_ms > 0:
                await anyio.sleep(self.config.max_wait_ms / 1000)
            while queue:
                batch = self._take(queue)
                if batch:
                    await self._run_batch(key, batch, call)
        finally:
            self._busy.discard(key)
            if self._queues.get(key) is queue:
                del self._queues[key]
            for p in queue:  # only reached on shutdown
                p.error = p.error or anyio.get_cancelled_exc_class()()
                p.done.set()

    async def _run_batch(
        self, key: Key, batch: list[_Pending], call: Callable[[EmbedRequest], Awaitable[EmbedResult]]
    ) -> None:
        texts = tuple(t for p in batch for t in p.texts)
        merged = EmbedRequest(model=key[1], texts=texts, dimensions=key[2])
        self._observe(key[0], len(batch), len(texts))
        try:
            with anyio.fail_after(self.deadline_s):
                result = await call(merged)
        except Exception as exc:
            for p in batch:
                p.error = exc
                p.done.set()
            return
        _split(result, batch, len(texts))


def _split(result: EmbedResult, batch: list[_Pending], total: int) -> None:
    offset = 0
    for p in batch:
        n = len(p.texts)
        share = round(result.usage.input_tokens * n / total) if total else 0
        p.result = EmbedResult(
            model=result.model,
            vectors=result.vectors[offset : offset + n],
            usage=Usage(input_tokens=share),
            # per-text truncation is not reported by adapters, so only a lone caller gets the count
            truncated=result.truncated if len(batch) == 1 else 0,
            max_input_tokens=result.max_input_tokens,
        )
        offset += n
        p.done.set()
