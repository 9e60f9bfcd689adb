from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp import Client

from adapters.base import AdapterContext
from adapters.errors import AdapterError, UpstreamStatusError
from adapters.manifest import MLXManifest
from adapters.mlx_local import MLXAdapter
from adapters.types import EmbedRequest, EmbedResult, RerankRequest, Usage
from server.batching import Coalescer, CoalescingAdapter
from server.manifests import BatchingConfig
from tests.support.fakes import FakeAdapter, fake_vector
from tests.support.gateway import fake_server
from tests.support.tiny_bert import write_tiny_bert

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def coalesced(adapter: FakeAdapter, **config: object) -> AsyncIterator[tuple[CoalescingAdapter, Coalescer]]:
    async with Coalescer(BatchingConfig.model_validate(config)) as co:
        yield CoalescingAdapter(adapter, co), co


async def drained(co: Coalescer) -> int:
    """Lanes left once every task has run as far as it can (batch tasks finish just after their callers)."""
    await anyio.wait_all_tasks_blocked()
    return co.lanes


async def test_concurrent_single_text_embeds_coalesce_and_split_back_in_order() -> None:
    adapter = FakeAdapter("a")
    adapter.delay_s = 0.02
    results: dict[int, list[list[float]]] = {}
    async with coalesced(adapter) as (wrapped, _):

        async def one(i: int) -> None:
            r = await wrapped.embed(EmbedRequest("m", (f"text {i}",)))
            results[i] = [list(v) for v in r.vectors]

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(one, i)
    assert len(adapter.calls) <= 2 and sum(n for _, n in adapter.calls) == 16
    assert all(results[i] == [fake_vector(f"text {i}")] for i in range(16))


async def test_batches_respect_the_text_limit() -> None:
    adapter = FakeAdapter("a")
    adapter.delay_s = 0.01
    async with coalesced(adapter, max_batch_texts=4) as (wrapped, _), anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(wrapped.embed, EmbedRequest("m", (str(i),)))
    assert max(n for _, n in adapter.calls) <= 4 and sum(n for _, n in adapter.calls) == 12


async def test_an_upstream_error_reaches_every_caller_in_the_batch() -> None:
    adapter = FakeAdapter("a")
    adapter.fail_with = lambda: UpstreamStatusError(503, "busy")
    errors = []
    async with coalesced(adapter) as (wrapped, _):

        async def one(i: int) -> None:
            try:
                await wrapped.embed(EmbedRequest("m", (str(i),)))
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
    async with coalesced(adapter) as (wrapped, _):

        async def impatient() -> None:
            with anyio.move_on_after(0.001):
                await wrapped.embed(EmbedRequest("m", ("a",)))

        async def patient() -> None:
            got.append(await wrapped.embed(EmbedRequest("m", ("b",))))

        async with anyio.create_task_group() as tg:
            tg.start_soon(impatient)
            tg.start_soon(patient)
    assert len(got) == 1 and got[0].vectors == [fake_vector("b")]


async def test_coalescing_off_passes_calls_straight_through() -> None:
    adapter = FakeAdapter("a")
    async with coalesced(adapter, coalesce=False) as (wrapped, _), anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(wrapped.embed, EmbedRequest("m", (str(i),)))
    assert len(adapter.calls) == 5


async def test_a_batch_whose_callers_all_left_is_cancelled_and_frees_its_lane_at_once() -> None:
    adapter = FakeAdapter("a")
    adapter.delay_s = 0.05
    async with coalesced(adapter) as (wrapped, co):
        async with anyio.create_task_group() as callers:
            callers.start_soon(wrapped.embed, EmbedRequest("m", ("lone",)))  # holds the lane briefly
            await adapter.entered.wait()
            adapter.delay_s, adapter.entered = 30, anyio.Event()  # the batch behind it meets a hung upstream
            for i in range(3):
                callers.start_soon(wrapped.embed, EmbedRequest("m", (f"queued {i}",)))
            with anyio.fail_after(5):
                await adapter.entered.wait()  # the lone call is done; the batch of three is upstream
            callers.cancel_scope.cancel()  # every caller of the running batch leaves
        with anyio.fail_after(5):
            await adapter.cancel_seen.wait()  # the upstream request itself was cancelled
            assert await drained(co) == 0
        adapter.delay_s = 0
        with anyio.fail_after(5):  # the next call is not stuck behind the abandoned batch
            result = await wrapped.embed(EmbedRequest("m", ("next",)))
    assert adapter.calls[1] == ("embed", 3) and result.vectors == [fake_vector("next")]


async def test_a_batch_runs_under_the_latest_of_its_callers_deadlines() -> None:
    adapter = FakeAdapter("a")
    adapter.delay_s = 30
    outcomes: list[str] = []
    async with coalesced(adapter) as (wrapped, co):

        async def caller(text: str, deadline_s: float) -> None:
            try:
                with anyio.fail_after(deadline_s):
                    await wrapped.embed(EmbedRequest("m", (text,)))
            except TimeoutError:
                outcomes.append(text)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(caller, "lone", 0.05)
                await adapter.entered.wait()
                tg.start_soon(caller, "short", 0.1)
                tg.start_soon(caller, "long", 0.3)
            assert await drained(co) == 0
    assert sorted(outcomes) == ["lone", "long", "short"]
    assert adapter.cancelled >= 2  # the lone call and the batch were both cut, not left running


async def test_concurrent_reranks_of_one_query_share_an_upstream_request_and_keep_their_own_top_n() -> None:
    adapter = FakeAdapter("a")
    adapter.delay_s = 0.02
    docs = [("red cat", "blue dog", "red hat"), ("a red cat sat", "green"), ("cat", "red cat", "dog", "red")]
    results: dict[int, list[tuple[int, float]]] = {}
    async with coalesced(adapter) as (wrapped, _):

        async def one(i: int) -> None:
            r = await wrapped.rerank(RerankRequest("m", "red cat", docs[i], top_n=2))
            results[i] = [(s.index, s.relevance_score) for s in r.results]

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, i)
    assert len(adapter.calls) == 2 and [n for _, n in adapter.calls] == [3, 6]
    assert results[0] == [(0, 1.0), (2, 0.5)]
    assert results[1] == [(0, 1.0), (1, 0.0)]
    assert results[2] == [(1, 1.0), (0, 0.5)]


class _ShortAdapter(FakeAdapter):
    """Answers a merged batch with one vector too few."""

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        result = await super().embed(req)
        vectors = result.vectors[:-1] if len(req.texts) > 1 else result.vectors
        return EmbedResult(req.model, vectors, Usage(len(vectors)))


async def test_a_batch_answered_with_the_wrong_vector_count_fails_every_caller_instead_of_misassigning() -> None:
    adapter = _ShortAdapter("a")
    adapter.delay_s = 0.02
    errors: list[AdapterError] = []
    async with coalesced(adapter) as (wrapped, _):

        async def one(i: int) -> None:
            try:
                await wrapped.embed(EmbedRequest("m", (f"t{i}",)))
            except AdapterError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
    assert len(errors) == 3 and all("3 texts" in e.message for e in errors)


async def test_sixteen_concurrent_single_text_embeds_share_forward_passes(tmp_path: Path) -> None:
    write_tiny_bert(tmp_path / "models" / "tiny")
    manifest = MLXManifest.model_validate(
        {
            "kind": "mlx",
            "name": "mlx",
            "models": [{"name": "enc", "role": "encoder", "path": "tiny", "capabilities": ["embed"]}],
        }
    )
    adapter = MLXAdapter(manifest, AdapterContext(models_dir=tmp_path / "models"))
    # a short gathering window makes the grouping independent of how fast the client sends
    perf = {"batching": {"max_wait_ms": 50}}
    server, _ = fake_server(tmp_path, {"mlx": adapter}, routes={"routes": {"embed": ["mlx/enc"]}}, performance=perf)
    results: dict[int, list[float]] = {}
    async with Client(server) as client:
        await client.call_tool("embed", {"input": "warm up"})
        before = adapter.forward_passes

        async def one(i: int) -> None:
            r = await client.call_tool("embed", {"input": f"text number {i}"})
            results[i] = r.structured_content["embeddings"][0]

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(16):
                    tg.start_soon(one, i)
        passes = adapter.forward_passes - before
        alone = await client.call_tool("embed", {"input": "text number 3"})
    assert len(results) == 16
    assert passes <= 4, f"16 concurrent calls took {passes} forward passes"
    assert alone.structured_content["embeddings"][0] == pytest.approx(results[3], abs=1e-5)


async def test_through_the_gateway_a_batch_whose_callers_left_frees_the_adapter_for_the_next_call(
    tmp_path: Path,
) -> None:
    adapter = FakeAdapter("a")
    adapter.delay_s = 0.05
    server, gateway = fake_server(tmp_path, {"a": adapter}, routes={"routes": {"embed": ["a/m"]}})
    async with Client(server) as client:
        async with anyio.create_task_group() as callers:
            callers.start_soon(client.call_tool, "embed", {"input": "lone"})
            await adapter.entered.wait()
            adapter.delay_s, adapter.entered = 30, anyio.Event()  # the batch behind it meets a hung upstream
            for i in range(3):
                callers.start_soon(client.call_tool, "embed", {"input": f"queued {i}"})
            with anyio.fail_after(5):
                await adapter.entered.wait()
            callers.cancel_scope.cancel()  # the clients give up on the batch (its deadline is 30 s away)
        with anyio.fail_after(5):
            await adapter.cancel_seen.wait()
            adapter.delay_s = 0
            result = await client.call_tool("embed", {"input": "next"})
        lanes = gateway.get().coalescer.lanes
    assert not result.is_error and adapter.calls[1] == ("embed", 3) and lanes == 0
