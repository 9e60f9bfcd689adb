"""The one chunking helper: split a batch, run chunks with a declared concurrency, keep input order.

A task group would wrap a failure in an ExceptionGroup; the router matches on
AdapterError subclasses and their `retryable` flag, so the first failure is
re-raised unwrapped and the remaining chunks are cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from adapters.errors import AdapterError
from adapters.types import ProgressFn

T = TypeVar("T")
R = TypeVar("R")


def chunked(items: Sequence[T], size: int) -> list[tuple[int, Sequence[T]]]:
    """(index of the chunk's first item, chunk) pairs of at most `size` items, in order."""
    step = max(1, size)
    return [(start, items[start : start + step]) for start in range(0, len(items), step)]


async def map_chunks(
    fn: Callable[[Sequence[T], int], Awaitable[R]],
    items: Sequence[T],
    *,
    size: int,
    concurrency: int,
    progress: ProgressFn | None = None,
) -> list[R]:
    """fn(chunk, index of its first item) per chunk; results in chunk order.

    At most `concurrency` chunks are in flight; when there is more than one chunk, `progress`
    hears the running count of items done as each chunk finishes.
    """
    chunks = chunked(items, size)
    if len(chunks) == 1:
        return [await fn(chunks[0][1], 0)]
    results: dict[int, R] = {}
    failure: list[AdapterError] = []
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    done = 0

    async with anyio.create_task_group() as tg:

        async def run(i: int) -> None:
            nonlocal done
            async with limiter:
                try:
                    results[i] = await fn(chunks[i][1], chunks[i][0])
                except AdapterError as exc:
                    failure.append(exc)
                    tg.cancel_scope.cancel()
                    return
            done += len(chunks[i][1])
            if progress is not None:
                await progress(float(done), float(len(items)), None)

        for i in range(len(chunks)):
            tg.start_soon(run, i)
    if failure:
        raise failure[0]
    return [results[i] for i in range(len(chunks))]
