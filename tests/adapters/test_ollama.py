"""OllamaAdapter against a real loopback fake Ollama (tests/support/fake_ollama.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import pytest

from adapters import _http
from adapters.base import AdapterContext, AdapterLimits
from adapters.errors import (
    AdapterTimeoutError,
    AdapterUnavailableError,
    CapabilityError,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from adapters.manifest import ModelSpec, OllamaManifest
from adapters.ollama import OllamaAdapter
from adapters.types import ChatMessage, ChatRequest, EmbedRequest, RerankRequest
from tests.support.contract import check_contract
from tests.support.fake_ollama import FakeOllama, Fault, embed_text, remote_counts, remote_inject, spawn
from tests.support.http1 import closed_port_url

pytestmark = pytest.mark.anyio

EMBEDDER = "all-minilm"
CHATTER = "llama3.2:1b"


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@asynccontextmanager
async def ollama(url: str, *, models: list[ModelSpec] | None = None, **limits: Any) -> AsyncIterator[OllamaAdapter]:
    manifest = OllamaManifest(kind="ollama", name="local-ollama", endpoint=url, models=models or [])
    adapter = OllamaAdapter(manifest, AdapterContext(limits=replace(AdapterLimits(), **limits)))
    try:
        yield adapter
    finally:
        await adapter.aclose()


def texts(n: int) -> tuple[str, ...]:
    return tuple(f"text number {i} about topic {i % 7}" for i in range(n))


def ask(content: str, **kwargs: Any) -> ChatRequest:
    return ChatRequest(model=CHATTER, messages=(ChatMessage("user", content),), **kwargs)


# --- probe ---------------------------------------------------------------------


async def test_probe_reports_version_and_guesses_capabilities_from_family(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        result = await adapter.probe()
    assert result.ok and result.error is None
    assert result.version == "0.9.9-fake"
    by_name = {m.name: m for m in result.models}
    assert by_name["nomic-embed-text:latest"].family == "nomic-bert"
    assert by_name["nomic-embed-text:latest"].capabilities == {"embed", "rerank"}
    assert by_name["llama3.2:1b"].capabilities == {"chat"}
    assert fake.counts() == {"/api/version": 1, "/api/tags": 1}
    # With no models in the manifest, the adapter now describes what the server has.
    assert adapter.info.models == result.models
    assert adapter.info.capabilities == {"chat", "embed", "rerank"}


async def test_probe_without_a_version_endpoint_is_still_ok_and_says_so(fake: FakeOllama) -> None:
    fake.inject(Fault("status", path="/api/version", status=404, message="404 page not found"))
    async with ollama(fake.url) as adapter:
        result = await adapter.probe()
    assert result.ok and result.version is None
    assert "HTTP 404" in result.details["version_error"]


async def test_probe_of_a_server_that_fails_its_model_list_is_not_ok(fake: FakeOllama) -> None:
    fake.inject(Fault("status", path="/api/tags", status=500, message="disk on fire"))
    async with ollama(fake.url) as adapter:
        result = await adapter.probe()
    assert not result.ok
    assert result.error is not None and "HTTP 500: disk on fire" in result.error


async def test_probe_keeps_manifest_capabilities_and_names_missing_models(fake: FakeOllama) -> None:
    models = [
        ModelSpec(name="all-minilm", capabilities=["embed"]),
        ModelSpec(name="not-pulled", capabilities=["chat"]),
    ]
    async with ollama(fake.url, models=models) as adapter:
        result = await adapter.probe()
    assert result.ok
    assert [(m.name, set(m.capabilities), m.family) for m in result.models] == [("all-minilm", {"embed"}, "bert")]
    assert result.details["missing_models"] == "not-pulled"


async def test_probe_of_a_refused_port_is_not_ok_and_does_not_raise() -> None:
    async with ollama(closed_port_url()) as adapter:
        result = await adapter.probe()
    assert not result.ok
    assert result.error is not None and "unreachable" in result.error


async def test_probe_of_a_hung_server_gives_up_at_the_probe_deadline(fake: FakeOllama) -> None:
    fake.inject(Fault("slow", delay_s=30))
    async with ollama(fake.url, probe_deadline_s=0.2) as adapter:
        with anyio.fail_after(10):
            result = await adapter.probe()
    assert not result.ok
    assert result.error is not None and "no answer within 0.2 s" in result.error


# --- embed ---------------------------------------------------------------------


async def test_embed_sends_64_texts_upstream_as_one_request(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        result = await adapter.embed(EmbedRequest(model=EMBEDDER, texts=texts(64)))
    assert fake.count("/api/embed") == 1
    assert len(result.vectors) == 64 and result.dimensions == 384
    assert result.usage.input_tokens > 64


async def test_embed_chunks_by_batch_limit_and_preserves_input_order(fake: FakeOllama) -> None:
    inputs = texts(64)
    seen: list[tuple[float, float | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total))

    async with ollama(fake.url, batch_limit=16) as adapter:
        result = await adapter.embed(EmbedRequest(model=EMBEDDER, texts=inputs, progress=progress))
    assert fake.count("/api/embed") == 4
    assert [list(v) for v in result.vectors] == [embed_text(t) for t in inputs]
    assert seen == [(16, 64), (32, 64), (48, 64), (64, 64)]


async def test_embed_sends_truncate_keep_alive_and_dimensions(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        result = await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("a", "b"), dimensions=128))
    path, body = fake.requests[-1]
    assert path == "/api/embed"
    assert body == {"model": EMBEDDER, "input": ["a", "b"], "truncate": True, "keep_alive": "5m", "dimensions": 128}
    assert result.dimensions == 128


async def test_embed_of_no_texts_sends_nothing_upstream(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        result = await adapter.embed(EmbedRequest(model=EMBEDDER, texts=()))
    assert result.vectors == [] and fake.counts() == {}


@pytest.mark.parametrize("kind", ["wrong_count", "ragged", "malformed"])
async def test_a_bad_embed_body_is_a_protocol_error_never_data(fake: FakeOllama, kind: str) -> None:
    fake.inject(Fault(kind, path="/api/embed"))  # type: ignore[arg-type]
    async with ollama(fake.url) as adapter:
        with pytest.raises(UpstreamProtocolError) as caught:
            await adapter.embed(EmbedRequest(model=EMBEDDER, texts=texts(3)))
    assert caught.value.retryable


@pytest.mark.parametrize(
    "body",
    [
        '{"embeddings": [[0.5, NaN], [0.5, 0.5]]}',
        '{"embeddings": [[0.5, "0.5"], [0.5, 0.5]]}',
        '{"embeddings": [[true, false], [0.5, 0.5]]}',
        '{"embeddings": [[], []]}',
        '{"embeddings": [[1e308, 1e308], [0.5, 0.5]]}',
        '{"embeddings": "nope"}',
        "[]",
    ],
)
async def test_vectors_that_are_not_finite_numbers_are_a_protocol_error(fake: FakeOllama, body: str) -> None:
    fake.inject(Fault("body", path="/api/embed", body=body))
    async with ollama(fake.url) as adapter:
        with pytest.raises(UpstreamProtocolError):
            await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("a", "b")))


async def test_integer_vector_elements_come_back_as_floats(fake: FakeOllama) -> None:
    fake.inject(Fault("body", path="/api/embed", body='{"embeddings": [[0, 1], [0.6, 0.8]]}'))
    async with ollama(fake.url) as adapter:
        result = await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("a", "b")))
    assert [[type(x) for x in v] for v in result.vectors] == [[float, float]] * 2


async def test_vectors_of_a_later_chunk_must_match_the_first_chunks_width(fake: FakeOllama) -> None:
    fake.inject(Fault("ragged", path="/api/embed", skip=1))
    async with ollama(fake.url, batch_limit=1) as adapter:
        with pytest.raises(UpstreamProtocolError, match="vector 1 has 383 dimensions, expected 384"):
            await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("one", "two")))


# --- rerank --------------------------------------------------------------------


async def test_rerank_puts_a_near_copy_of_the_query_first_using_one_request(fake: FakeOllama) -> None:
    query = "how do I reset my router password"
    docs = ("bananas are rich in potassium", "how can I reset the password of my router", "router firmware notes")
    async with ollama(fake.url) as adapter:
        result = await adapter.rerank(RerankRequest(model=EMBEDDER, query=query, documents=docs, top_n=2))
    assert [s.index for s in result.results] == [1, 2]
    assert result.results[0].relevance_score > result.results[1].relevance_score
    assert result.method == "bi-encoder-cosine"
    assert fake.count("/api/embed") == 1
    assert fake.requests[-1][1]["input"] == [query, *docs]


# --- chat ----------------------------------------------------------------------


async def test_chat_maps_length_usage_and_timings(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        result = await adapter.chat(ask("tell me about the sea and the sky", max_tokens=3, temperature=0.2))
    assert result.content == "Echo: tell me"
    assert result.finish_reason == "length"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 3)
    # The fake reports 2 ms load, 0.1 ms per prompt token, 5 ms per output token, 1 ms overhead.
    assert result.timings.total_ms == pytest.approx(2 + 1.2 + 15 + 1)
    assert result.timings.time_to_first_token_ms == pytest.approx(3.2)
    assert result.timings.tokens_per_second == pytest.approx(200)
    body = fake.requests[-1][1]
    assert body["stream"] is False
    assert body["options"] == {"num_predict": 3, "temperature": 0.2}


async def test_chat_without_limits_sends_no_options_and_finishes_with_stop(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        result = await adapter.chat(ask("hello there", stop=("there",)))
    assert result.content == "Echo: hello "
    assert result.finish_reason == "stop"
    assert fake.requests[-1][1]["options"] == {"stop": ["there"]}


async def test_streamed_chat_reports_progress_per_chunk_and_joins_the_content(fake: FakeOllama) -> None:
    calls: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        calls.append(done)

    async with ollama(fake.url) as adapter:
        result = await adapter.chat(ask("one two three", progress=progress))
    assert result.content == "Echo: one two three"
    assert calls == [1, 2, 3, 4]
    assert result.usage.output_tokens == 4
    assert fake.requests[-1][1]["stream"] is True


async def test_streamed_chat_is_stopped_by_the_callers_deadline(fake: FakeOllama) -> None:
    fake.inject(Fault("drip", path="/api/chat", drip_interval_s=30, times=1))
    started = anyio.Event()

    async def progress(done: float, total: float | None, message: str | None) -> None:
        started.set()

    async with ollama(fake.url) as adapter:
        with pytest.raises(TimeoutError), anyio.fail_after(0.5):
            await adapter.chat(ask("a b c d e f", progress=progress))
        assert started.is_set()
        # The cancelled stream was closed: the same adapter goes on serving.
        result = await adapter.chat(ask("again"))
    assert result.content == "Echo: again"


async def test_a_stream_cut_short_is_a_protocol_error(fake: FakeOllama) -> None:
    fake.inject(Fault("malformed", path="/api/chat"))

    async def progress(done: float, total: float | None, message: str | None) -> None:
        return None

    async with ollama(fake.url) as adapter:
        with pytest.raises(UpstreamProtocolError):
            await adapter.chat(ask("hi", progress=progress))


# --- errors --------------------------------------------------------------------


async def test_a_refused_connection_is_a_retryable_unavailable_error() -> None:
    async with ollama(closed_port_url()) as adapter:
        with pytest.raises(AdapterUnavailableError) as caught:
            await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("x",)))
    assert caught.value.retryable
    assert "127.0.0.1" not in str(caught.value)


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (503, None), (429, 7.0)])
async def test_server_overload_is_a_retryable_status_error(
    fake: FakeOllama, status: int, retry_after: float | None
) -> None:
    header = None if retry_after is None else f"{retry_after:g}"
    fake.inject(Fault("status", status=status, message="server busy", retry_after=header, times=1))
    async with ollama(fake.url) as adapter:
        # A Retry-After longer than the caller's deadline is not waited for: the router gets the error.
        with anyio.fail_after(3), pytest.raises(UpstreamStatusError) as caught:
            await adapter.chat(ask("hi"))
        assert (await adapter.chat(ask("hi"))).content == "Echo: hi"
    assert fake.count("/api/chat") == 2
    assert caught.value.retryable and caught.value.status == status
    assert caught.value.retry_after_s == retry_after
    assert "server busy" in str(caught.value)


async def test_an_unknown_model_is_not_found_and_not_retryable(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        with pytest.raises(ModelNotFoundError, match="not-pulled") as caught:
            await adapter.embed(EmbedRequest(model="not-pulled", texts=("x",)))
    assert not caught.value.retryable


async def test_a_request_the_backend_rejects_is_invalid_and_not_retryable(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        with pytest.raises(InvalidRequestError, match="does not support chat") as caught:
            await adapter.chat(ChatRequest(model=EMBEDDER, messages=(ChatMessage("user", "hi"),)))
    assert not caught.value.retryable


async def test_a_capability_no_listed_model_has_is_refused_before_any_request(fake: FakeOllama) -> None:
    async with ollama(fake.url, models=[ModelSpec(name=EMBEDDER, capabilities=["embed"])]) as adapter:
        with pytest.raises(CapabilityError):
            await adapter.chat(ask("hi"))
    assert fake.counts() == {}


async def test_a_connection_dropped_before_the_answer_is_a_retryable_unavailable_error(fake: FakeOllama) -> None:
    fake.inject(Fault("disconnect", path="/api/embed", times=1))
    async with ollama(fake.url) as adapter:
        with pytest.raises(AdapterUnavailableError) as caught:
            await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("x",)))
    assert caught.value.retryable


async def test_a_dripping_body_is_stopped_by_the_callers_deadline(fake: FakeOllama) -> None:
    fake.inject(Fault("drip", path="/api/embed", drip_interval_s=0.05, times=1))
    async with ollama(fake.url) as adapter:
        with pytest.raises(TimeoutError), anyio.fail_after(0.5):
            await adapter.embed(EmbedRequest(model=EMBEDDER, texts=texts(4)))
        assert len((await adapter.embed(EmbedRequest(model=EMBEDDER, texts=texts(4)))).vectors) == 4


async def test_a_read_timeout_is_a_retryable_timeout_error(fake: FakeOllama) -> None:
    fake.inject(Fault("slow", delay_s=30, times=1))
    async with ollama(fake.url, read_timeout_s=0.2) as adapter:
        with pytest.raises(AdapterTimeoutError) as caught, anyio.fail_after(10):
            await adapter.chat(ask("hi"))
    assert caught.value.retryable


# --- lifecycle -----------------------------------------------------------------


async def test_one_client_serves_every_call_and_construction_does_no_io(fake: FakeOllama) -> None:
    before = _http.CLIENTS_BUILT
    async with ollama(fake.url) as adapter:
        assert (_http.CLIENTS_BUILT - before, fake.counts()) == (0, {})
        await adapter.probe()
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(adapter.embed, EmbedRequest(model=EMBEDDER, texts=texts(i + 1)))
                tg.start_soon(adapter.chat, ask(f"question {i}"))
        await adapter.rerank(RerankRequest(model=EMBEDDER, query="q", documents=("a", "b")))
    assert _http.CLIENTS_BUILT - before == 1
    assert fake.count("/api/embed") == 9 and fake.count("/api/chat") == 8


async def test_aclose_is_idempotent_and_later_calls_fail_retryably(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("x",)))
        await adapter.aclose()
        await adapter.aclose()
        with pytest.raises(AdapterUnavailableError, match="closed"):
            await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("x",)))
        assert not (await adapter.probe()).ok


@pytest.mark.parametrize(
    "models",
    [
        [ModelSpec(name=EMBEDDER, capabilities=["embed", "rerank"]), ModelSpec(name=CHATTER, capabilities=["chat"])],
        [ModelSpec(name="nomic-embed-text", capabilities=["embed"])],
    ],
)
async def test_the_adapter_meets_the_shared_adapter_contract(fake: FakeOllama, models: list[ModelSpec]) -> None:
    async with ollama(fake.url, models=models) as adapter:
        by_capability = {c: spec.name for spec in models for c in spec.capabilities}
        await check_contract(adapter, by_capability)


async def test_the_fake_runs_as_a_process_and_is_steered_over_http() -> None:
    with spawn() as url:
        await anyio.to_thread.run_sync(remote_inject, url, Fault("status", status=503, times=1))
        async with ollama(url) as adapter:
            with pytest.raises(UpstreamStatusError):
                await adapter.embed(EmbedRequest(model=EMBEDDER, texts=texts(5)))
            assert len((await adapter.embed(EmbedRequest(model=EMBEDDER, texts=texts(5)))).vectors) == 5
        assert await anyio.to_thread.run_sync(remote_counts, url) == {"/api/embed": 2}


# --- identity and upstream bounds ---------------------------------------------------


async def test_manifest_models_match_the_server_s_list_under_any_spelling_ollama_accepts(fake: FakeOllama) -> None:
    models = [
        ModelSpec(name="ALL-MINILM", capabilities=["embed"]),
        ModelSpec(name="registry.ollama.ai/library/llama3.2:1b", capabilities=["chat"]),
    ]
    async with ollama(fake.url, models=models) as adapter:
        result = await adapter.probe()
        assert adapter.canonical_model("Library/LLAMA3.2:1b") == "llama3.2:1b"
    assert "missing_models" not in result.details
    assert [(m.name, m.family) for m in result.models] == [
        ("ALL-MINILM", "bert"),
        ("registry.ollama.ai/library/llama3.2:1b", "llama"),
    ]


async def test_a_pinned_width_turns_an_answer_of_another_width_into_a_retryable_error(fake: FakeOllama) -> None:
    models = [ModelSpec(name=EMBEDDER, capabilities=["embed"], dimensions=768)]
    async with ollama(fake.url, models=models) as adapter:
        with pytest.raises(UpstreamProtocolError, match="384 dimensions, expected 768") as caught:
            await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("a",)))
    assert caught.value.retryable


async def test_a_model_that_changes_width_between_answers_is_caught(fake: FakeOllama) -> None:
    async with ollama(fake.url) as adapter:
        await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("a",)))
        fake.inject(Fault("body", path="/api/embed", body='{"embeddings": [[0.6, 0.8]]}', times=1))
        with pytest.raises(UpstreamProtocolError, match="2 dimensions, expected 384"):
            await adapter.embed(EmbedRequest(model="all-minilm:latest", texts=("a",)))


@pytest.mark.parametrize("dimensions", [6_000_000, 70_000])
async def test_a_vector_past_the_dimension_limit_is_a_retryable_error_naming_the_limit(
    fake: FakeOllama, dimensions: int
) -> None:
    fake.inject(Fault("wide", path="/api/embed", dimensions=dimensions, times=1))
    async with ollama(fake.url) as adapter:
        with anyio.fail_after(30), pytest.raises(UpstreamProtocolError, match="the limit is 65536") as caught:
            await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("a",)))
        assert len((await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("a",)))).vectors[0]) == 384
    assert caught.value.retryable and str(dimensions) in str(caught.value)


async def test_the_manifest_sets_the_response_cap(fake: FakeOllama) -> None:
    fake.inject(Fault("oversized", path="/api/embed", size_bytes=3 << 20, times=1))
    manifest = OllamaManifest(kind="ollama", name="capped", endpoint=fake.url, max_response_bytes=1 << 20)
    adapter = OllamaAdapter(manifest, AdapterContext())
    with anyio.fail_after(30), pytest.raises(UpstreamProtocolError, match="response limit of 1048576 bytes") as caught:
        await adapter.embed(EmbedRequest(model=EMBEDDER, texts=("a",)))
    await adapter.aclose()
    assert caught.value.retryable
