"""MLX adapter profile: embed latency by batch size, peak RSS with the default packs, SmolLM2 speed.

`python -m benchmarks.mlx_profile [--reference-blas]` (needs `model-gateway models pull`). Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import anyio

from adapters.base import AdapterContext
from adapters.manifest import MLXManifest
from adapters.mlx_local import MLXAdapter
from adapters.types import ChatMessage, ChatRequest, EmbedRequest
from server.paths import default_models_dir

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    shipped = json.loads((ROOT / "manifests" / "adapters" / "mlx.json").read_text())
    if "--reference-blas" in sys.argv:
        shipped["options"] = {**shipped.get("options", {}), "blas": "reference"}
    # the encoder alone first, so its memory is not mixed with the chat model's
    encoder_only = {**shipped, "models": [m for m in shipped["models"] if m["role"] == "encoder"]}
    context = AdapterContext(models_dir=default_models_dir(os.environ))
    adapter = MLXAdapter(MLXManifest.model_validate(encoder_only), context)
    out: dict[str, object] = {}
    try:
        texts = [f"sentence number {i} about a cat that sat on a mat" for i in range(128)]
        await adapter.embed(EmbedRequest("all-minilm-l6-v2", tuple(texts[:8])))
        out["rss_mib_encoder_loaded"] = round(peak_rss_mib(), 1)
        for n in (1, 8, 32, 128):
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                await adapter.embed(EmbedRequest("all-minilm-l6-v2", tuple(texts[:n])))
                runs.append((time.perf_counter() - started) * 1000)
            out[f"embed_{n}_ms_p50"] = round(statistics.median(runs), 1)
        out["rss_mib_after_128"] = round(peak_rss_mib(), 1)
        out["blas"] = adapter.blas
    finally:
        await adapter.aclose()
    adapter = MLXAdapter(MLXManifest.model_validate(shipped), context)
    try:
        req = ChatRequest("smollm2-135m-instruct", (ChatMessage("user", "What is the capital of France?"),), 24, 0.0)
        reply = await adapter.chat(req)
        out["chat_tokens_per_s"] = reply.timings.tokens_per_second
        out["chat_ttft_ms"] = reply.timings.time_to_first_token_ms
        out["chat_reply"] = reply.content
        out["rss_mib_with_chat"] = round(peak_rss_mib(), 1)
    finally:
        await adapter.aclose()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    anyio.run(main)
