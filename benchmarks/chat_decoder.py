"""The chat model's two CPU forward passes side by side in one process: mlx-lm's model (float32, with the
numpy softmax and SwiGLU and one-row sgemv) against the numpy decoder, on the same float32 SmolLM2 weights.

`python -m benchmarks.chat_decoder [--rounds N]` (needs `model-gateway models pull`). Alternating round by
round, each reads a ~2,000-token prompt in 256-token chunks and then generates 64 tokens greedily through
mlx-lm's own generation loop; prints one JSON object with the medians: prompt tokens/s, ms per generated token,
and the numpy/mlx ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

ROUNDS, CHUNK, PROMPT_TOKENS, REPLY_TOKENS = 3, 256, 2000, 64


def _one(model: Any, ids: list[int], tokenizer: Any) -> tuple[float, float]:
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler

    cache = make_prompt_cache(model)
    started = time.perf_counter()
    for start in range(0, len(ids) - 1, CHUNK):
        chunk = mx.array(ids[start : min(start + CHUNK, len(ids) - 1)])[None]
        if hasattr(model, "read"):
            model.read(chunk, cache)
        else:
            model(chunk, cache=cache)
            mx.eval([c.state for c in cache])
    read_s = time.perf_counter() - started
    stamps = []
    sampler = make_sampler(temp=0.0)
    for _ in stream_generate(
        model, tokenizer, mx.array(ids[-1:]), max_tokens=REPLY_TOKENS, sampler=sampler, prompt_cache=cache
    ):
        stamps.append(time.perf_counter())
    per_token = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return (len(ids) - 1) / read_s, per_token * 1000


def main(rounds: int) -> dict[str, Any]:
    from adapters._blas import load_openblas

    blas = load_openblas()
    from mlx_lm import load

    from adapters.mlx_layout import choose_layout
    from server.paths import default_models_dir

    pack = str(default_models_dir(os.environ) / "smollm2-135m-instruct")
    model, tokenizer = load(pack)
    decoder, decoder_layout = choose_layout(model)  # lets go of the MLX model's layers as it goes
    mlx_model, mlx_layout = choose_layout(load(pack)[0], whole_numpy=False)  # MLX's CPU substitutions
    text = " ".join(f"Paragraph {i}: local models answer questions and summarise documents." for i in range(400))
    ids = tokenizer.encode(text)[:PROMPT_TOKENS]
    figures: dict[str, list[tuple[float, float]]] = {"mlx": [], "numpy": []}
    for _ in range(rounds):
        figures["mlx"].append(_one(mlx_model, ids, tokenizer))
        figures["numpy"].append(_one(decoder, ids, tokenizer))
    out: dict[str, Any] = {"blas": blas, "mlx layout": mlx_layout, "numpy layout": decoder_layout}
    for name, runs in figures.items():
        out[f"{name}_prompt_tok_s"] = round(statistics.median(r[0] for r in runs), 1)
        out[f"{name}_ms_per_token"] = round(statistics.median(r[1] for r in runs), 1)
    out["numpy/mlx prompt rate"] = round(out["numpy_prompt_tok_s"] / out["mlx_prompt_tok_s"], 2)
    out["numpy/mlx time per token"] = round(out["numpy_ms_per_token"] / out["mlx_ms_per_token"], 2)
    return out


if __name__ == "__main__":
    count = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else ROUNDS
    print(json.dumps(main(count), indent=1))
