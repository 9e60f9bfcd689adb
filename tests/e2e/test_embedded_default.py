"""`model-gateway serve` with the shipped manifests: real MLX models, driven by a real MCP client over stdio."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import anyio
import pytest
from mcp import Client

from server.paths import default_models_dir
from tests.support.processes import stdio_params

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.packs]
MODELS = default_models_dir(os.environ)


@pytest.fixture
def packs_installed() -> None:
    for pack in ("all-minilm-l6-v2", "smollm2-135m-instruct"):
        if not (MODELS / pack).is_dir():
            pytest.skip(f"model pack {pack!r} is not installed in {MODELS} (model-gateway models pull)")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_the_embedded_default_serves_vectors_rerank_and_chat(tmp_path: Path, packs_installed: None) -> None:
    # stdio hosts pass only HOME, PATH and a few more: point HOME's cache at the installed packs
    env = {"MODEL_GATEWAY_MODELS_DIR": str(MODELS)}
    with anyio.fail_after(240):
        async with Client(stdio_params(tmp_path, None, env=env)) as client:
            emb = await client.call_tool(
                "embed", {"input": ["A man is eating food.", "A man is eating a meal.", "The stock market fell."]}
            )
            assert not emb.is_error, emb.content
            s = emb.structured_content
            assert s["adapter"] == "mlx" and s["model"] == "all-minilm-l6-v2" and s["dimensions"] == 384
            v = s["embeddings"]
            assert cosine(v[0], v[1]) > cosine(v[0], v[2]) + 0.3
            by_alias = await client.call_tool("embed", {"input": "x", "model": "all-MiniLM-L6-v2"})
            assert not by_alias.is_error and by_alias.structured_content["model"] == "all-minilm-l6-v2"
            rr = await client.call_tool(
                "rerank",
                {"query": "What do people eat?", "documents": ["Stocks fell sharply.", "A man is eating a meal."]},
            )
            assert not rr.is_error and rr.structured_content["results"][0]["index"] == 1
            assert rr.structured_content["method"] == "bi-encoder-cosine"
            ch = await client.call_tool(
                "chat",
                {
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    "max_tokens": 16,
                    "temperature": 0,
                },
            )
            assert not ch.is_error, ch.content
            c = ch.structured_content
            assert c["adapter"] == "mlx" and c["finish_reason"] in ("stop", "length")
            assert "Paris" in c["message"]["content"]
            assert c["usage"]["output_tokens"] >= 1 and c["timings"]["tokens_per_second"] > 0
            health = json.loads((await client.read_resource("gateway://health")).contents[0].text)  # type: ignore[union-attr]
    mlx = health["adapters"]["mlx"]
    # live, not the last probe's view: both models are loaded and have served
    assert {name: s["state"] for name, s in mlx["model_states"].items()} == {
        "all-minilm-l6-v2": "ready",
        "smollm2-135m-instruct": "ready",
    }
    assert mlx["last_served"] is not None and mlx["breaker"] == "closed"
