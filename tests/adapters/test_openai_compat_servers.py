"""The OpenAI-compatible adapter against the servers people run: text-embeddings-inference and mlx_lm.server.

Neither lists models the OpenAI way (TEI has no `/v1/models`; `mlx_lm.server` answers 500 there
without a Hugging Face cache folder), so an adapter with declared models must stay usable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from adapters.base import AdapterContext, AdapterLimits
from adapters.manifest import OpenAIManifest
from adapters.openai_compat import DECLARED_UNVERIFIED, OpenAIAdapter
from adapters.types import ChatMessage, ChatRequest, EmbedRequest, RerankRequest
from tests.support.fake_openai import FakeOpenAI, toy_vector
from tests.support.fake_tei import DIMENSIONS, MODEL_ID, FakeTEI
from tests.support.http1 import closed_port_url

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.anyio
TEI_MODELS = [{"name": MODEL_ID, "capabilities": ["embed", "rerank"]}]


def tei_adapter(url: str, *, models: list[dict[str, Any]] | None = None, **options: Any) -> OpenAIAdapter:
    manifest = OpenAIManifest.model_validate(
        {
            "kind": "openai",
            "name": "tei",
            "endpoint": url,
            "privacy": "local",
            "models": TEI_MODELS if models is None else models,
            "options": {"rerank_path": "/rerank", "rerank_style": "tei", "batch_limit": 32, **options},
        }
    )
    return OpenAIAdapter(manifest, AdapterContext(limits=AdapterLimits(probe_deadline_s=5.0)))


async def test_a_tei_server_without_a_model_listing_serves_its_declared_models() -> None:
    with FakeTEI() as tei:
        adapter = tei_adapter(tei.url)
        probe = await adapter.probe()
        assert probe.ok, probe.error
        assert probe.details["models"] == DECLARED_UNVERIFIED and "HTTP 404" in probe.details["listing_error"]
        assert [m.name for m in probe.models] == [MODEL_ID]
        texts = tuple(f"document number {i}" for i in range(40))
        embedded = await adapter.embed(EmbedRequest(model=MODEL_ID, texts=texts))
        assert [list(v) for v in embedded.vectors] == [toy_vector(t, DIMENSIONS) for t in texts]
        assert tei.count("/v1/embeddings") == 2  # 40 texts in chunks TEI accepts (32 + 8)
        docs = ("red fox", "blue sky", "red fox jumps high")
        ranked = await adapter.rerank(RerankRequest(model=MODEL_ID, query="red fox jumps", documents=docs, top_n=2))
        assert [r.index for r in ranked.results] == [2, 0] and tei.count("/rerank") == 1
        await adapter.aclose()


async def test_a_tei_batch_over_its_client_limit_is_refused_with_tei_s_message() -> None:
    with FakeTEI() as tei:
        adapter = tei_adapter(tei.url, batch_limit=64)
        with pytest.raises(Exception, match="maximum allowed batch size 32") as caught:
            await adapter.embed(EmbedRequest(model=MODEL_ID, texts=tuple(f"t{i}" for i in range(40))))
        assert getattr(caught.value, "retryable", None) is False
        await adapter.aclose()


async def test_without_declared_models_a_failed_listing_leaves_nothing_to_serve() -> None:
    with FakeTEI() as tei:
        adapter = tei_adapter(tei.url, models=[])
        probe = await adapter.probe()
        assert not probe.ok and "HTTP 404" in (probe.error or "")
        await adapter.aclose()


async def test_a_listing_refused_for_the_key_is_down_not_unverified() -> None:
    with FakeOpenAI(api_key="sk-right-key-0000") as fake:
        manifest = OpenAIManifest.model_validate(
            {
                "kind": "openai",
                "name": "frontier",
                "endpoint": fake.url,
                "models": [{"name": "toy-chat", "capabilities": ["chat"]}],
            }
        )
        adapter = OpenAIAdapter(manifest, AdapterContext())  # no key sent: the server answers 401
        probe = await adapter.probe()
        assert not probe.ok and "HTTP 401" in (probe.error or "")
        await adapter.aclose()


async def test_a_tei_server_that_comes_up_later_is_used_and_then_verified_on_its_own() -> None:
    url = closed_port_url()
    adapter = tei_adapter(url)
    down = await adapter.probe()
    assert not down.ok and "unreachable" in (down.error or "")
    tei = FakeTEI()
    tei.start(port=int(url.rsplit(":", 1)[1]))
    try:
        unverified = await adapter.probe()
        assert unverified.ok and unverified.details["models"] == DECLARED_UNVERIFIED
        assert len((await adapter.embed(EmbedRequest(model=MODEL_ID, texts=("x",)))).vectors) == 1
        tei.list_models = True
        verified = await adapter.probe()
        assert verified.ok and verified.details["models"] == "verified"
    finally:
        tei.stop()
        await adapter.aclose()


# --- a real mlx_lm.server --------------------------------------------------------------


def free_port() -> int:
    return int(closed_port_url().rsplit(":", 1)[1])


async def wait_for_port(port: int, proc: anyio.abc.Process) -> None:
    with anyio.fail_after(120):
        while True:
            assert proc.returncode is None, "mlx_lm.server exited before it listened"
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.2)
                continue
            await stream.aclose()
            return


async def test_chat_against_a_real_mlx_lm_server_whose_model_listing_fails(tmp_path: Path) -> None:
    from tests.support.tiny_lm import build_tiny_lm

    model_dir = await anyio.to_thread.run_sync(build_tiny_lm, tmp_path / "lm")
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir), "--port", str(port)]
    # As on a machine without a Hugging Face cache folder: /v1/models then fails.
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "no-hf-cache"), "HF_HUB_OFFLINE": "1"}
    async with await anyio.open_process(cmd, env=env, stdout=None, stderr=None) as proc:
        try:
            await wait_for_port(port, proc)
            manifest = OpenAIManifest.model_validate(
                {
                    "kind": "openai",
                    "name": "mlx-server",
                    "endpoint": f"http://127.0.0.1:{port}",
                    "privacy": "local",
                    "models": [{"name": "default_model", "capabilities": ["chat"]}],
                }
            )
            adapter = OpenAIAdapter(manifest, AdapterContext(limits=AdapterLimits(probe_deadline_s=10.0)))
            probe = await adapter.probe()
            assert probe.ok and probe.details["models"] == DECLARED_UNVERIFIED, probe
            steps: list[float] = []

            async def progress(done: float, total: float | None, message: str | None) -> None:
                steps.append(done)

            messages = (ChatMessage("user", "Say hello."),)
            with anyio.fail_after(120):
                plain = await adapter.chat(ChatRequest(model="default_model", messages=messages, max_tokens=8))
                streamed = await adapter.chat(
                    ChatRequest(model="default_model", messages=messages, max_tokens=8, progress=progress)
                )
            for result in (plain, streamed):
                assert isinstance(result.content, str)
                assert result.finish_reason in ("stop", "length")
                assert 0 < result.usage.output_tokens <= 8
            assert steps == sorted(steps) and len(steps) <= 8
            await adapter.aclose()
        finally:
            proc.terminate()
