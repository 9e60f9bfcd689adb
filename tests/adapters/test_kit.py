"""The adapter kit: lifecycle every kind shares, and chunked embeds at a declared concurrency."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from adapters._batch import chunked, map_chunks
from adapters.base import AdapterContext, AdapterInfo, AdapterLimits, ModelInfo
from adapters.errors import AdapterUnavailableError, CapabilityError, UpstreamProtocolError
from adapters.kit import AdapterBase
from adapters.naming import canonical_model
from adapters.types import EmbedRequest

pytestmark = pytest.mark.anyio


class Holding(AdapterBase):
    """A kind whose release takes a while (a child process, a pool draining)."""

    kind = "test"
    close_grace_s = 0.5

    def __init__(self, release_forever: bool = False, batch_limit: int = 2, concurrency: int = 2) -> None:
        info = AdapterInfo("held", "test", "local", frozenset({"embed"}), (ModelInfo("m", frozenset({"embed"})),))
        super().__init__(info, AdapterContext(limits=AdapterLimits(batch_limit=batch_limit)), pinned={})
        self.embed_concurrency = concurrency  # type: ignore[misc]
        self.release_forever = release_forever
        self.releases = 0
        self.released = False

    async def _release(self) -> None:
        self.releases += 1
        await anyio.sleep(0.05)
        if self.release_forever:
            await anyio.sleep_forever()
        self.released = True


async def test_aclose_finishes_its_release_even_when_the_caller_is_cancelled() -> None:
    adapter = Holding()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await adapter.aclose()
    assert adapter.released and adapter.closed
    await adapter.aclose()
    assert adapter.releases == 1


async def test_a_release_that_never_ends_is_abandoned_after_the_grace() -> None:
    adapter = Holding(release_forever=True)
    with anyio.fail_after(10):
        await adapter.aclose()
    assert adapter.closed and not adapter.released


async def test_calls_after_aclose_and_undeclared_capabilities_fail_before_any_work() -> None:
    adapter = Holding()
    with pytest.raises(CapabilityError, match="does not serve chat"):
        adapter.require("chat")
    await adapter.aclose()
    with pytest.raises(AdapterUnavailableError, match="closed") as caught:
        await adapter.embed_in_chunks(EmbedRequest(model="m", texts=("a",)), _never)
    assert caught.value.retryable


async def _never(texts: Sequence[str], first: int) -> tuple[list[list[float]], int]:
    raise AssertionError("no chunk may be sent")


async def test_chunks_run_at_the_declared_concurrency_and_come_back_in_order() -> None:
    adapter = Holding(batch_limit=2, concurrency=2)
    in_flight = peak = 0
    seen: list[tuple[float, float | None]] = []

    async def send(texts: Sequence[str], first: int) -> tuple[list[list[float]], int]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01 * (5 - first // 2))  # later chunks finish first
        in_flight -= 1
        return [[float(first + i), 1.0] for i in range(len(texts))], len(texts)

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total))

    texts = tuple(f"t{i}" for i in range(9))
    result = await adapter.embed_in_chunks(EmbedRequest(model="m", texts=texts, progress=progress), send)
    assert [v[0] for v in result.vectors] == [float(i) for i in range(9)]
    assert peak == 2 and result.usage.input_tokens == 9
    done = [d for d, _ in seen]
    assert len(done) == 5 and done == sorted(set(done)) and done[-1] == 9.0  # one report per chunk, as they finish
    assert all(total == 9.0 for _, total in seen)


async def test_the_first_failing_chunk_is_raised_as_itself_and_the_rest_are_cancelled() -> None:
    finished: list[int] = []

    async def fn(chunk: Sequence[int], first: int) -> int:
        if first == 2:
            raise UpstreamProtocolError("chunk two is bad")
        await anyio.sleep(5)
        finished.append(first)
        return first

    with anyio.fail_after(3), pytest.raises(UpstreamProtocolError, match="chunk two"):
        await map_chunks(fn, list(range(8)), size=2, concurrency=4)
    assert finished == []
    assert chunked("abcde", 2) == [(0, "ab"), (2, "cd"), (4, "e")]


async def test_vectors_of_every_chunk_are_checked_against_the_first_answer_s_width() -> None:
    adapter = Holding(batch_limit=1, concurrency=1)

    async def send(texts: Sequence[str], first: int) -> tuple[list[list[float]], int]:
        return [[0.5] * (4 if first == 0 else 3)], 1

    with pytest.raises(UpstreamProtocolError, match="vector 1 has 3 dimensions, expected 4"):
        await adapter.embed_in_chunks(EmbedRequest(model="m", texts=("a", "b")), send)


def test_the_base_keeps_model_names_as_given() -> None:
    adapter = Holding()
    assert adapter.canonical_model("Org/Model:Tag") == canonical_model(adapter, "Org/Model:Tag") == "Org/Model:Tag"
