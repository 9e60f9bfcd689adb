from __future__ import annotations

import anyio
import pytest

from adapters.errors import UpstreamStatusError
from adapters.types import EmbedRequest
from server.batching import EmbedCoalescer
from server.manifests import BatchingConfig
from tests.support.fakes import FakeAdapter, fake_vector

pytestmark = pytest.mark.anyio


async def test_concurrent_single_text_embeds_coalesce_and_split_back_in_order() -> None:
    adapter = FakeAdapter("a")
    adapter.delay_s = 0.02
    results: dict[int, list[list[float]]] = {}
    async with EmbedCoalescer(BatchingConfig(), deadline_s=5) as co:

        async def one(i: int) -> None:
            r = await co.embed(adapter, EmbedRequest("m", (f"text {i}",)), adapter.embed)
            results[i] = [list(v) for v in r.vectors]

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(one, i)
    assert len(adapter.calls) <= 2 and sum(n for _, n in adapter.calls) == 16
    assert all(results[i] == [fake_vector(f"text {i}")] for i in range(16))


async def test_batches_respect_the_text_limit() -> None:
    adapter = FakeAdapter("a")
    adapter.delay_s = 0.01
    async with EmbedCoalescer(BatchingConfig(max_batch_texts=4), deadline_s=5) as co, anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(co.embed, adapter, EmbedRequest("m", (str(i),)), adapter.embed)
    assert max(n for _, n in adapter.calls) <= 4 and sum(n for _, n in adapter.calls) == 12


async def test_an_upstream_error_reaches_every_caller_in_the_batch() -> None:
    adapter = FakeAdapter("a")
    adapter.fail_with = lambda: UpstreamStatusError(503, "busy")
    errors = []
    async with EmbedCoalescer(BatchingConfig(), deadline_s=5) as co:

        async def one(i: int) -> None:
            try:
                await co.embed(adapter, EmbedRequest("m", (str(i),)), adapter.embed)
            except UpstreamStatusError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
    assert len(errors) == 4


async def test_a_caller_that_gives_up_does_not_cancel_its_neighbours() -> None:
    adapter = FakeAdapter("a")
    adapter.delay_s = 0.05
    got = []
    async with EmbedCoalescer(BatchingConfig(), deadline_s=5) as co:

        async def impatient() -> None:
            with anyio.move_on_after(0.001):
                await co.embed(adapter, EmbedRequest("m", ("a",)), adapter.embed)

        async def patient() -> None:
            got.append(await co.embed(adapter, EmbedRequest("m", ("b",)), adapter.embed))

        async with anyio.create_task_group() as tg:
            tg.start_soon(impatient)
            tg.start_soon(patient)
    assert len(got) == 1 and got[0].vectors == [fake_vector("b")]


async def test_coalescing_off_passes_calls_straight_through() -> None:
    adapter = FakeAdapter("a")
    async with EmbedCoalescer(BatchingConfig(coalesce=False), deadline_s=5) as co, anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(co.embed, adapter, EmbedRequest("m", (str(i),)), adapter.embed)
    assert len(adapter.calls) == 5
