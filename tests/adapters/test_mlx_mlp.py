from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm import load as mlx_lm_load
from mlx_lm.models.activations import swiglu as mlx_swiglu
from mlx_lm.models.cache import make_prompt_cache

from adapters.mlx_mlp import swiglu, use_numpy_swiglu
from tests.support.tiny_lm import build_tiny_lm


def test_numpy_swiglu_matches_mlx_including_inputs_whose_exp_overflows() -> None:
    gate = mx.concatenate([mx.random.normal((1, 5, 64), key=mx.random.key(1)) * 4, mx.full((1, 1, 64), -100.0)], 1)
    up = mx.random.normal((1, 6, 64), key=mx.random.key(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exp(100) overflowing must not warn
        got = swiglu(gate, up)
    assert got.shape == (1, 6, 64) and got.dtype == mx.float32
    assert np.allclose(np.array(got), np.array(mlx_swiglu(gate, up)), atol=1e-5)
    assert np.isfinite(np.array(got)).all()


def _greedy(model: nn.Module, prompt: list[int], steps: int) -> list[int]:
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]
    out = []
    for _ in range(steps):
        out.append(int(mx.argmax(logits, axis=-1).item()))
        logits = model(mx.array([[out[-1]]]), cache=cache)[:, -1, :]
    return out


def test_a_model_switched_to_numpy_swiglu_generates_what_it_generated_before(tmp_path: Path) -> None:
    path = build_tiny_lm(tmp_path / "lm")
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    prompt = [(i * 37) % (vocab - 10) + 10 for i in range(40)]
    model, _ = mlx_lm_load(str(path))
    before = _greedy(model, prompt, 16)
    assert use_numpy_swiglu(model) == 2  # both layers of the tiny model
    assert all(type(layer.mlp).__name__ == "NumpySwiGLUMLP" for layer in model.layers)
    assert _greedy(model, prompt, 16) == before


class _GeluMLP(nn.Module):
    """Named like a SwiGLU layer, but with another activation: it must keep its own forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.gelu(self.gate_proj(x)) * self.up_proj(x))


def test_a_feed_forward_layer_with_another_activation_or_precision_is_left_alone(tmp_path: Path) -> None:
    assert use_numpy_swiglu(_GeluMLP()) == 0
    model, _ = mlx_lm_load(str(build_tiny_lm(tmp_path / "lm")))
    model.set_dtype(mx.float16)
    assert use_numpy_swiglu(model) == 0
