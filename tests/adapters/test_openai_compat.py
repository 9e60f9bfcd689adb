from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import SecretStr

from adapters import _http
from adapters.base import AdapterContext, AdapterLimits
from adapters.errors import (
    AdapterUnavailableError,
    CapabilityError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from adapters.manifest import OpenAIManifest
from adapters.openai_compat import OpenAIAdapter
from adapters.types import ChatMessage, ChatRequest, EmbedRequest, RerankRequest
from tests.support.contract import check_contract
from tests.support.fake_openai import FakeOpenAI, toy_vector

KEY = "sk-test-5f3a9c1e7b2d4068"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.anyio


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY, models=("toy-chat", "toy-embed-small")) as server:
        yield server


def make(endpoint: str, *, key: str | None = KEY, limits: AdapterLimits | None = None, **fields: Any) -> OpenAIAdapter:
    manifest = OpenAIManifest.model_validate(
        {"kind": "openai", "name": "frontier", "endpoint": endpoint, "api_key_env": "FRONTIER_KEY", **fields}
    )
    secrets = {"FRONTIER_KEY": SecretStr(key)} if key is not None else {}
    return OpenAIAdapter(manifest, AdapterContext(limits=limits or AdapterLimits(), secrets=secrets))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_building_the_adapter_opens_no_connection(fake: FakeOpenAI) -> None:
    built = _http.CLIENTS_BUILT
    adapter = make(fake.url)
    assert fake.connections == 0
    assert built == _http.CLIENTS_BUILT
    assert adapter.info.privacy == "remote"
    await adapter.aclose()
    assert fake.connections == 0


async def test_key_is_sent_as_bearer_and_never_shown_in_repr(fake: FakeOpenAI) -> None:
    adapter = make(fake.url)
    await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(adapter) and KEY not in repr(adapter.info)
    await adapter.aclose()


@pytest.mark.parametrize("wrong_key", ["sk-live-wrongkey99887766", "plain-secret-without-prefix"])
async def test_a_401_that_echoes_the_key_is_redacted_and_returned_at_once(fake: FakeOpenAI, wrong_key: str) -> None:
    adapter = make(fake.url, key=wrong_key)
    with pytest.raises(UpstreamStatusError) as caught:
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))
    err = caught.value
    assert err.status == 401 and err.retryable is False
    assert "Incorrect API key provided" in str(err)
    assert wrong_key not in str(err) and wrong_key not in repr(err)
    assert fake.count("/v1/embeddings") == 1
    await adapter.aclose()


async def test_provider_text_with_bearer_tokens_is_redacted(fake: FakeOpenAI) -> None:
    fake.fail_next("/v1/embeddings", 400, body='{"error": {"message": "bad header {auth} and sk-other-1234567890"}}')
    adapter = make(fake.url)
    with pytest.raises(UpstreamStatusError) as caught:
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))
    assert KEY not in str(caught.value) and "sk-other" not in str(caught.value)
    assert "bad header" in str(caught.value)
    await adapter.aclose()


async def test_a_429_is_retried_after_the_servers_retry_after(fake: FakeOpenAI) -> None:
    fake.fail_next("/v1/embeddings", 429, headers={"retry-after": "0"})
    adapter = make(fake.url)
    with anyio.fail_after(10):
        result = await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))
    assert result.vectors[0] == toy_vector("hello")
    assert fake.count("/v1/embeddings") == 2
    await adapter.aclose()


async def test_no_retry_is_started_that_would_outlive_the_callers_deadline(fake: FakeOpenAI) -> None:
    fake.fail_next("/v1/embeddings", 429, headers={"retry-after": "30"}, times=3)
    adapter = make(fake.url)
    with anyio.fail_after(3), pytest.raises(UpstreamStatusError) as caught:
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))
    assert caught.value.status == 429 and caught.value.retryable is True
    assert fake.count("/v1/embeddings") == 1
    await adapter.aclose()


async def test_server_errors_are_retried_at_most_twice(fake: FakeOpenAI) -> None:
    fake.fail_next("/v1/chat/completions", 500, headers={"retry-after": "0"}, times=5)
    adapter = make(fake.url)
    with anyio.fail_after(10), pytest.raises(UpstreamStatusError) as caught:
        await adapter.chat(ChatRequest(model="toy-chat", messages=(ChatMessage("user", "hi"),)))
    assert caught.value.status == 500 and caught.value.retryable is True
    assert fake.count("/v1/chat/completions") == 3
    await adapter.aclose()


async def test_a_client_error_returns_at_once_with_the_providers_message(fake: FakeOpenAI) -> None:
    fake.fail_next("/v1/embeddings", 400, body='{"error": {"message": "input is too long for this model"}}')
    adapter = make(fake.url)
    with pytest.raises(UpstreamStatusError) as caught:
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))
    assert caught.value.retryable is False
    assert "HTTP 400" in str(caught.value) and "input is too long for this model" in str(caught.value)
    assert fake.count("/v1/embeddings") == 1
    await adapter.aclose()


async def test_a_body_that_is_not_json_is_a_protocol_error_without_retry(fake: FakeOpenAI) -> None:
    fake.malformed_next("/v1/embeddings")
    adapter = make(fake.url)
    with pytest.raises(UpstreamProtocolError):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))
    assert fake.count("/v1/embeddings") == 1
    await adapter.aclose()


async def test_base64_embeddings_decode_to_the_same_floats(fake: FakeOpenAI) -> None:
    texts = ("alpha", "beta", "gamma")
    as_float = make(fake.url, options={"embed_encoding": "float"})
    as_b64 = make(fake.url, options={"embed_encoding": "base64"})
    floats = await as_float.embed(EmbedRequest(model="toy-embed", texts=texts))
    assert fake.requests[-1].json()["encoding_format"] == "float"
    packed = await as_b64.embed(EmbedRequest(model="toy-embed", texts=texts, dimensions=16))
    assert fake.requests[-1].json()["encoding_format"] == "base64"
    assert [list(v) for v in floats.vectors] == [toy_vector(t) for t in texts]
    assert [list(v) for v in packed.vectors] == [toy_vector(t, 16) for t in texts]
    await as_float.aclose()
    await as_b64.aclose()


async def test_auto_encoding_uses_float_for_an_unknown_upstream(fake: FakeOpenAI) -> None:
    adapter = make(fake.url)
    await adapter.embed(EmbedRequest(model="toy-embed", texts=("x",)))
    assert fake.requests[-1].json()["encoding_format"] == "float"
    await adapter.aclose()


async def test_embed_is_chunked_by_batch_limit_and_keeps_input_order(fake: FakeOpenAI) -> None:
    texts = tuple(f"text number {i}" for i in range(7))
    adapter = make(fake.url, limits=AdapterLimits(batch_limit=3))
    result = await adapter.embed(EmbedRequest(model="toy-embed", texts=texts))
    assert [list(v) for v in result.vectors] == [toy_vector(t) for t in texts]
    assert sorted(len(r.json()["input"]) for r in fake.requests) == [1, 3, 3]
    assert result.usage.input_tokens == 21
    await adapter.aclose()


async def test_calls_reuse_one_pooled_connection(fake: FakeOpenAI) -> None:
    adapter = make(fake.url)
    built = _http.CLIENTS_BUILT
    for i in range(10):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=(f"t{i}",)))
    assert fake.connections == 1
    assert built + 1 == _http.CLIENTS_BUILT
    await adapter.aclose()


async def test_a_refused_connection_is_unavailable_and_retryable() -> None:
    adapter = make(f"http://127.0.0.1:{free_port()}", limits=AdapterLimits(connect_timeout_s=1.0))
    with anyio.fail_after(10), pytest.raises(AdapterUnavailableError) as caught:
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("x",)))
    assert caught.value.retryable is True
    await adapter.aclose()


async def test_a_remote_endpoint_without_its_key_fails_naming_the_variable() -> None:
    adapter = make("https://api.example.invalid", key=None)
    with pytest.raises(AdapterUnavailableError, match="FRONTIER_KEY"):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("x",)))
    probe = await adapter.probe()
    assert probe.ok is False and "FRONTIER_KEY" in (probe.error or "")
    await adapter.aclose()


async def test_a_loopback_endpoint_may_have_no_key() -> None:
    with FakeOpenAI() as open_fake:
        adapter = make(open_fake.url, key=None)
        result = await adapter.embed(EmbedRequest(model="toy-embed", texts=("x",)))
        assert result.dimensions == 8
        assert "authorization" not in open_fake.requests[-1].headers
        await adapter.aclose()


async def test_rerank_speaks_cohere_and_tei_styles(fake: FakeOpenAI) -> None:
    docs = ("red fox", "blue sky", "red fox jumps high")
    req = RerankRequest(model="toy-rerank", query="red fox jumps", documents=docs, top_n=2)
    cohere = make(fake.url, options={"rerank_path": "/v1/rerank"})
    tei = make(fake.url, options={"rerank_path": "/rerank", "rerank_style": "tei"})
    for adapter in (cohere, tei):
        result = await adapter.rerank(req)
        assert [r.index for r in result.results] == [2, 0]
        assert result.method == "upstream"
        await adapter.aclose()
    assert fake.requests[-2].json()["return_documents"] is False
    assert fake.requests[-1].json() == {"query": "red fox jumps", "texts": list(docs)}


async def test_rerank_is_not_declared_without_a_rerank_path(fake: FakeOpenAI) -> None:
    adapter = make(fake.url)
    assert "rerank" not in adapter.info.capabilities
    with pytest.raises(CapabilityError):
        await adapter.rerank(RerankRequest(model="m", query="q", documents=("d",)))
    assert fake.requests == []
    await adapter.aclose()


async def test_probe_lists_upstream_models_and_keeps_declared_capabilities(fake: FakeOpenAI) -> None:
    adapter = make(fake.url, models=[{"name": "toy-chat", "capabilities": ["chat", "embed"]}])
    probe = await adapter.probe()
    assert probe.ok
    by_name = {m.name: m.capabilities for m in probe.models}
    assert by_name == {"toy-chat": frozenset({"chat", "embed"}), "toy-embed-small": frozenset({"embed"})}
    await adapter.aclose()


async def test_streamed_chat_reports_progress_and_matches_the_plain_answer(fake: FakeOpenAI) -> None:
    seen: list[tuple[float, float | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total))

    adapter = make(fake.url)
    messages = (ChatMessage("user", "one two three four five"),)
    plain = await adapter.chat(ChatRequest(model="toy-chat", messages=messages, max_tokens=4))
    streamed = await adapter.chat(ChatRequest(model="toy-chat", messages=messages, max_tokens=4, progress=progress))
    assert fake.requests[-1].json()["stream"] is True
    assert streamed.content == plain.content == "echo: one two three"
    assert streamed.finish_reason == plain.finish_reason == "length"
    assert streamed.usage == plain.usage
    assert [d for d, _ in seen] == [1.0, 2.0, 3.0, 4.0] and seen[0][1] == 4.0
    assert streamed.timings.time_to_first_token_ms is not None
    await adapter.aclose()


async def test_the_adapter_passes_the_contract(fake: FakeOpenAI) -> None:
    adapter = make(fake.url, options={"rerank_path": "/v1/rerank"})
    await check_contract(adapter, {"chat": "toy-chat", "embed": "toy-embed", "rerank": "toy-rerank"})


async def test_an_embed_only_adapter_refuses_chat_in_the_contract(fake: FakeOpenAI) -> None:
    adapter = make(fake.url, models=[{"name": "toy-embed", "capabilities": ["embed"]}])
    await check_contract(adapter, {"embed": "toy-embed"})


async def test_the_fake_server_runs_as_a_module() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.support.fake_openai", "--port", str(port), "--api-key", KEY]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with await anyio.open_process(cmd, cwd=ROOT, env=env, stdout=None) as proc:
        try:
            assert proc.stderr is not None
            banner = b""
            with anyio.fail_after(30):
                while b"\n" not in banner:
                    banner += await proc.stderr.receive()
            assert f"127.0.0.1:{port}".encode() in banner
            adapter = make(f"http://127.0.0.1:{port}")
            probe = await adapter.probe()
            assert probe.ok and [m.name for m in probe.models] == ["toy-chat"]
            await adapter.aclose()
        finally:
            proc.terminate()


# --- upstream bounds ------------------------------------------------------------------


async def test_an_answer_over_the_response_cap_is_a_retryable_error_naming_the_limit(fake: FakeOpenAI) -> None:
    fake.huge_next("/v1/embeddings", size_bytes=80 << 20)
    adapter = make(fake.url)
    with anyio.fail_after(30), pytest.raises(UpstreamProtocolError, match="response limit of 33554432 bytes") as caught:
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))
    assert caught.value.retryable
    assert len((await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))).vectors) == 1
    await adapter.aclose()


@pytest.mark.parametrize("dimensions", [6_000_000, 70_000])
async def test_vectors_past_the_dimension_limit_never_reach_the_caller(fake: FakeOpenAI, dimensions: int) -> None:
    fake.huge_next("/v1/embeddings", dimensions=dimensions)
    adapter = make(fake.url)
    with anyio.fail_after(30), pytest.raises(UpstreamProtocolError, match="the limit is 65536"):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("a", "b")))
    await adapter.aclose()


async def test_a_pinned_width_is_checked_on_every_answer(fake: FakeOpenAI) -> None:
    pinned = make(fake.url, models=[{"name": "toy-embed", "capabilities": ["embed"], "dimensions": 16}])
    with pytest.raises(UpstreamProtocolError, match=r"8 dimensions, expected 16 \(pinned"):
        await pinned.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    # Asking for a width the model offers (Matryoshka-style) is checked against what was asked.
    assert len((await pinned.embed(EmbedRequest(model="toy-embed", texts=("a",), dimensions=16))).vectors[0]) == 16
    await pinned.aclose()


async def test_a_dripping_answer_is_cut_by_the_caller_s_deadline(fake: FakeOpenAI) -> None:
    fake.drip_next("/v1/embeddings", 0.05)
    adapter = make(fake.url)
    with pytest.raises(TimeoutError), anyio.fail_after(1):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("hello",)))
    await adapter.aclose()
