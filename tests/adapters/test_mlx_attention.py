from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load as mlx_lm_load
from mlx_lm.models.cache import make_prompt_cache

from adapters.mlx_attention import scaled_dot_product_attention, use_numpy_softmax
from tests.support.tiny_lm import build_tiny_lm


@pytest.mark.parametrize(("length", "total"), [(1, 1), (1, 300), (7, 7), (16, 200), (64, 64)])
def test_numpy_softmax_attention_matches_mlx_with_grouped_heads_and_a_cache_offset(length: int, total: int) -> None:
    mx.random.seed(length + total)
    queries = mx.random.normal((1, 6, length, 32)) * 2
    keys, values = mx.random.normal((1, 2, total, 32)) * 2, mx.random.normal((1, 2, total, 32))
    expected = mx.fast.scaled_dot_product_attention(
        queries, keys, values, scale=32**-0.5, mask="causal" if length > 1 else None
    )
    got = scaled_dot_product_attention(queries, keys, values, 32**-0.5)
    assert got.shape == expected.shape == (1, 6, length, 32)
    assert np.allclose(np.array(got), np.array(expected), atol=2e-6)


def _greedy(path: Path, numpy_softmax: bool, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    model, _ = mlx_lm_load(str(path))
    if numpy_softmax:
        assert use_numpy_softmax(model) == 2  # both layers of the tiny model
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]
    first = np.array(logits)
    out = []
    for _ in range(steps):
        token = int(mx.argmax(logits, axis=-1).item())
        out.append(token)
        logits = model(mx.array([[token]]), cache=cache)[:, -1, :]
    return out, first


def test_a_model_switched_to_numpy_softmax_generates_what_mlx_attention_generates(tmp_path: Path) -> None:
    path = build_tiny_lm(tmp_path / "lm")
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    prompt = [(i * 37) % (vocab - 10) + 10 for i in range(90)]
    numpy_tokens, numpy_logits = _greedy(path, True, prompt, 24)
    mlx_tokens, mlx_logits = _greedy(path, False, prompt, 24)
    assert numpy_tokens == mlx_tokens
    assert np.allclose(numpy_logits, mlx_logits, atol=1e-4)


def test_only_float32_llama_style_attention_is_switched(tmp_path: Path) -> None:
    model, _ = mlx_lm_load(str(build_tiny_lm(tmp_path / "lm")))
    model.set_dtype(mx.float16)
    assert use_numpy_softmax(model) == 0
    model.set_dtype(mx.float32)
    assert use_numpy_softmax(model) == 2
    assert all(type(layer.self_attn).__name__ == "NumpySoftmaxAttention" for layer in model.layers)


def test_an_explicit_mask_array_keeps_mlx_attention(tmp_path: Path) -> None:
    from mlx_lm.models.base import create_causal_mask

    model, _ = mlx_lm_load(str(build_tiny_lm(tmp_path / "lm")))
    attention = model.layers[0].self_attn
    x = mx.random.normal((1, 5, 64))
    mask = create_causal_mask(5, 0, window_size=2)
    expected = attention(x, mask=mask, cache=make_prompt_cache(model)[0])
    use_numpy_softmax(model)
    got = attention(x, mask=mask, cache=make_prompt_cache(model)[0])
    assert np.allclose(np.array(got), np.array(expected), atol=1e-6)
