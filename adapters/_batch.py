"""Run per-chunk work concurrently and surface the first adapter error as itself.

A task group would wrap a failure in an ExceptionGroup; the router matches on
AdapterError subclasses and their `retryable` flag, so the first failure is
re-raised unwrapped and the remaining chunks are cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from adapters.errors import AdapterError

C = TypeVar("C")
R = TypeVar("R")


async def map_chunks(fn: Callable[[C], Awaitable[R]], chunks: Sequence[C], concurrency: int) -> list[R]:
    """Results in chunk order; at most `concurrency` chunks in flight."""
    if len(chunks) == 1:
        return [await fn(chunks[0])]
    results: dict[int, R] = {}
    failure: list[AdapterError] = []
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async with anyio.create_task_group() as tg:

        async def run(i: int) -> None:
            async with limiter:
                try:
                    results[i] = await fn(chunks[i])
                except AdapterError as exc:
                    failure.append(exc)
                    tg.cancel_scope.cancel()

        for i in range(len(chunks)):
            tg.start_soon(run, i)
    if failure:
        raise failure[0]
    return [results[i] for i in range(len(chunks))]
