"""Concurrent embed tool calls reach the in-process MLX encoder as a few forward passes, not one each."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import Client

from adapters.base import AdapterContext
from adapters.manifest import MLXManifest
from adapters.mlx_local import MLXAdapter
from tests.support.gateway import fake_server
from tests.support.tiny_bert import write_tiny_bert

pytestmark = pytest.mark.anyio


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
