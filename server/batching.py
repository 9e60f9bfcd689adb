"""Coalescing as an adapter decorator: concurrent calls that an upstream can serve as one request leave as one.

`CoalescingAdapter` wraps an adapter when the state is built. Embed calls for
the same (model, dimensions) and rerank calls for the same (model, query) are
merged: texts (documents) are concatenated, sent once, and the answer is split
back per caller in order. Any capability whose backend takes batches is one
more `Batching` here.

Continuous batching: a call that finds its lane idle goes at once, in its own
task (no added latency at low load); calls that arrive while a request is
upstream queue and leave together as the next batch, bounded by an item count
and an estimated token budget. Batches run in the coalescer's task group, so a
caller that gives up never cancels the batch its neighbours wait on; a batch
runs under the latest of its callers' deadlines (the router's attempt
deadlines), and a batch whose callers have all left is cancelled at once,
freeing its lane for the next call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup

from adapters.base import Adapter, AdapterInfo, ProbeResult
from adapters.errors import AdapterTimeoutError, UpstreamProtocolError
from adapters.naming import canonical_model
from adapters.types import (
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    RerankRequest,
    RerankResult,
    Usage,
    rank,
)
from server.manifests import BatchingConfig

BatchObserver = Callable[[str, int, int], None]  # adapter, calls in batch, texts in batch
Req = TypeVar("Req")
Res = TypeVar("Res")


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1


class Batching(Protocol[Req, Res]):
    """How one capability's requests merge into one upstream request and its answer splits back."""

    def key(self, req: Req) -> Hashable: ...
    def items(self, req: Req) -> int: ...
    def weight(self, req: Req) -> tuple[int, int]: ...  # items, estimated tokens
    def merge(self, reqs: Sequence[Req]) -> Req: ...
    def split(self, result: Res, reqs: Sequence[Req]) -> list[Res]: ...


def _shares(tokens: int, sizes: Sequence[int]) -> list[int]:
    total = sum(sizes)
    return [round(tokens * n / total) if total else 0 for n in sizes]


class EmbedBatching:
    def key(self, req: EmbedRequest) -> Hashable:
        return (req.model, req.dimensions)

    def items(self, req: EmbedRequest) -> int:
        return len(req.texts)

    def weight(self, req: EmbedRequest) -> tuple[int, int]:
        return len(req.texts), sum(estimate_tokens(t) for t in req.texts)

    def merge(self, reqs: Sequence[EmbedRequest]) -> EmbedRequest:
        first = reqs[0]
        return EmbedRequest(
            model=first.model, texts=tuple(t for r in reqs for t in r.texts), dimensions=first.dimensions
        )

    def split(self, result: EmbedResult, reqs: Sequence[EmbedRequest]) -> list[EmbedResult]:
        sizes = [len(r.texts) for r in reqs]
        if len(result.vectors) != sum(sizes):
            raise UpstreamProtocolError(f"returned {len(result.vectors)} vectors for {sum(sizes)} texts")
        out, offset = [], 0
        for n, share in zip(sizes, _shares(result.usage.input_tokens, sizes), strict=True):
            vectors = result.vectors[offset : offset + n]
            # per-text truncation is not reported by adapters: a merged batch cannot say whose text was cut
            out.append(EmbedResult(result.model, vectors, Usage(share), 0, result.max_input_tokens))
            offset += n
        return out


class RerankBatching:
    """Documents ranked against the same query score independently: one request ranks them all."""

    def key(self, req: RerankRequest) -> Hashable:
        return (req.model, req.query)

    def items(self, req: RerankRequest) -> int:
        return len(req.documents)

    def weight(self, req: RerankRequest) -> tuple[int, int]:
        return len(req.documents), sum(estimate_tokens(d) for d in req.documents) + estimate_tokens(req.query)

    def merge(self, reqs: Sequence[RerankRequest]) -> RerankRequest:
        first = reqs[0]
        return RerankRequest(first.model, first.query, tuple(d for r in reqs for d in r.documents), None)

    def split(self, result: RerankResult, reqs: Sequence[RerankRequest]) -> list[RerankResult]:
        sizes = [len(r.documents) for r in reqs]
        scores: list[float | None] = [None] * sum(sizes)
        for s in result.results:
            if 0 <= s.index < len(scores):
                scores[s.index] = s.relevance_score
        if any(s is None for s in scores):
            raise UpstreamProtocolError(f"returned {len(result.results)} scores for {len(scores)} documents")
        out, offset = [], 0
        for req, n, share in zip(reqs, sizes, _shares(result.usage.input_tokens, sizes), strict=True):
            mine = [float(s) for s in scores[offset : offset + n] if s is not None]
            out.append(RerankResult(result.model, rank(mine, req.top_n), result.method, Usage(share)))
            offset += n
        return out


EMBED = EmbedBatching()
RERANK = RerankBatching()


@dataclass(eq=False, slots=True)
class _Pending(Generic[Req, Res]):
    req: Req
    deadline: float
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Res | None = None
    error: BaseException | None = None
    abandoned: bool = False


@dataclass(eq=False, slots=True)
class _Lane(Generic[Req, Res]):
    """One (adapter, capability, batch key) while it has work: its queue and the batch upstream now."""

    key: Hashable
    adapter: str
    batching: Batching[Req, Res]
    call: Callable[[Req], Awaitable[Res]]
    queue: deque[_Pending[Req, Res]] = field(default_factory=deque)
    running: list[_Pending[Req, Res]] = field(default_factory=list)
    scope: anyio.CancelScope | None = None


class Coalescer:
    """Owns the lanes and the task group their batches run in (entered and left with the state)."""

    def __init__(self, config: BatchingConfig, on_batch: BatchObserver | None = None) -> None:
        self.config = config
        self._on_batch = on_batch
        self._lanes: dict[Hashable, _Lane[Any, Any]] = {}  # only lanes with work: bounded by calls in flight
        self._tg: TaskGroup | None = None
        self.batches = 0

    async def __aenter__(self) -> Coalescer:
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

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    async def submit(
        self, adapter: str, req: Req, batching: Batching[Req, Res], call: Callable[[Req], Awaitable[Res]]
    ) -> Res:
        """Send `req` through `call`, merged with whatever is queued for the same lane."""
        items = batching.items(req)
        if self._tg is None or not self.config.coalesce or items >= self.config.max_batch_texts:
            return await call(req)
        key = (adapter, id(batching), batching.key(req))
        lane = self._lanes.get(key)
        if lane is None and self.config.max_wait_ms == 0:
            # idle lane: go at once, in the caller's own task; whoever arrives meanwhile queues
            lane = self._lanes[key] = _Lane(key, adapter, batching, call)
            try:
                result = await call(req)
            finally:
                self._release(lane)
            self._observe(lane, 1, items)
            return result
        if lane is None:
            lane = self._lanes[key] = _Lane(key, adapter, batching, call)
            self._start(lane)
        return await self._queued(lane, req)

    async def _queued(self, lane: _Lane[Req, Res], req: Req) -> Res:
        pending: _Pending[Req, Res] = _Pending(req, anyio.current_effective_deadline())
        lane.queue.append(pending)
        try:
            await pending.done.wait()
        except BaseException:
            pending.abandoned = True
            if lane.scope is not None and pending in lane.running and all(p.abandoned for p in lane.running):
                lane.scope.cancel()  # nobody is left to answer: free the lane now
            raise
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _release(self, lane: _Lane[Any, Any]) -> None:
        """A lone call finished: hand what queued behind it to a batch task, or free the lane."""
        if lane.queue:
            self._start(lane)
        else:
            self._lanes.pop(lane.key, None)

    def _start(self, lane: _Lane[Any, Any]) -> None:
        assert self._tg is not None
        self._tg.start_soon(self._drain, lane)

    def _observe(self, lane: _Lane[Any, Any], calls: int, items: int) -> None:
        self.batches += 1
        if self._on_batch is not None and lane.batching is EMBED:
            self._on_batch(lane.adapter, calls, items)

    def _take(self, lane: _Lane[Req, Res]) -> list[_Pending[Req, Res]]:
        batch: list[_Pending[Req, Res]] = []
        items = tokens = 0
        while lane.queue:
            p = lane.queue[0]
            if p.abandoned:
                lane.queue.popleft()
                continue
            n, cost = lane.batching.weight(p.req)
            too_big = items + n > self.config.max_batch_texts or tokens + cost > self.config.token_budget
            if batch and too_big:
                break
            batch.append(lane.queue.popleft())
            items, tokens = items + n, tokens + cost
        return batch

    async def _drain(self, lane: _Lane[Any, Any]) -> None:
        try:
            if self.config.max_wait_ms > 0:
                await anyio.sleep(self.config.max_wait_ms / 1000)
            while lane.queue:
                batch = self._take(lane)
                if batch:
                    await self._run(lane, batch)
        finally:
            if self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]
            for p in lane.queue:  # only reached on shutdown
                p.error = p.error or anyio.get_cancelled_exc_class()()
                p.done.set()

    async def _run(self, lane: _Lane[Req, Res], batch: list[_Pending[Req, Res]]) -> None:
        reqs = [p.req for p in batch]
        merged = reqs[0] if len(reqs) == 1 else lane.batching.merge(reqs)
        self._observe(lane, len(batch), sum(lane.batching.items(r) for r in reqs))
        parts: list[Res] | None = None
        error: Exception | None = None
        lane.running = batch
        try:
            with anyio.CancelScope(deadline=max(p.deadline for p in batch)) as lane.scope:
                result = await lane.call(merged)
                parts = [result] if len(reqs) == 1 else lane.batching.split(result, reqs)
        except Exception as exc:
            error = exc
        finally:
            lane.running, lane.scope = [], None
            _answer(batch, parts, error)


def _answer(
    batch: Sequence[_Pending[Any, Any]], parts: list[Any] | None = None, error: BaseException | None = None
) -> None:
    if parts is None and error is None:
        # cancelled: every caller left, or the latest of their deadlines passed
        error = AdapterTimeoutError("the coalesced batch was cancelled: every caller had left")
    for i, p in enumerate(batch):
        if parts is not None:
            p.result = parts[i]
        else:
            p.error = error
        p.done.set()


class CoalescingAdapter:
    """An adapter whose embed and rerank go through the coalescer; chat and probes go straight through."""

    def __init__(self, inner: Adapter, coalescer: Coalescer) -> None:
        self.inner = inner
        self._coalescer = coalescer

    @property
    def info(self) -> AdapterInfo:
        return self.inner.info  # read through: adapters may widen their info once they have seen a server

    @info.setter
    def info(self, value: AdapterInfo) -> None:
        self.inner.info = value

    def canonical_model(self, name: str) -> str:
        return canonical_model(self.inner, name)

    async def probe(self) -> ProbeResult:
        return await self.inner.probe()

    async def chat(self, req: ChatRequest) -> ChatResult:
        return await self.inner.chat(req)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        return await self._coalescer.submit(self.inner.info.name, req, EMBED, self.inner.embed)

    async def rerank(self, req: RerankRequest) -> RerankResult:
        return await self._coalescer.submit(self.inner.info.name, req, RERANK, self.inner.rerank)

    async def aclose(self) -> None:
        await self.inner.aclose()
