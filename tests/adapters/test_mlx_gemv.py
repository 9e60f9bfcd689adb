from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm import load as mlx_lm_load
from mlx_lm.models.cache import make_prompt_cache

from adapters._blas import APT_PACKAGE, find_openblas
from adapters._cblas import CblasProducts
from adapters.mlx_gemv import use_sgemv_for_one_row
from tests.support.tiny_lm import build_tiny_lm


@pytest.fixture(scope="module")
def sgemv() -> object:
    library = find_openblas()
    if library is None:
        pytest.skip(f"no OpenBLAS installed (apt-get install {APT_PACKAGE})")
    return CblasProducts(library)


def _layer(bias: bool) -> nn.Linear:
    layer = nn.Linear(48, 80, bias=bias)
    layer.update(
        {
            "weight": mx.random.normal((80, 48), key=mx.random.key(3)),
            **({"bias": mx.random.normal((80,), key=mx.random.key(4))} if bias else {}),
        }
    )
    mx.eval(layer.parameters())
    return layer


@pytest.mark.parametrize("bias", [False, True])
def test_a_one_row_product_through_sgemv_equals_mlxs(sgemv: object, bias: bool) -> None:
    layer = _layer(bias)
    row, rows = mx.random.normal((1, 1, 48), key=mx.random.key(5)), mx.random.normal((1, 7, 48), key=mx.random.key(6))
    expected_row, expected_rows = layer(row), layer(rows)
    assert use_sgemv_for_one_row(layer, sgemv) == 1
    got = layer(row)
    assert got.shape == (1, 1, 80)
    assert np.allclose(np.array(got), np.array(expected_row), atol=1e-5)
    assert np.array_equal(np.array(layer(rows)), np.array(expected_rows))  # many rows keep MLX's product


def test_a_replaced_weight_is_used_rather_than_the_one_seen_when_switching(sgemv: object) -> None:
    layer = _layer(False)
    use_sgemv_for_one_row(layer, sgemv)
    layer.weight = layer.weight * 2
    row = mx.ones((1, 48))
    assert np.allclose(np.array(layer(row)), np.array(row @ layer.weight.T), atol=1e-5)


def test_a_model_with_sgemv_for_one_row_generates_what_it_generated_before(tmp_path: Path, sgemv: object) -> None:
    path = build_tiny_lm(tmp_path / "lm")
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    prompt = [(i * 37) % (vocab - 10) + 10 for i in range(40)]
    model, _ = mlx_lm_load(str(path))

    def greedy() -> tuple[list[int], np.ndarray]:
        cache = make_prompt_cache(model)
        logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]
        out, steps = [], []
        for _ in range(16):
            out.append(int(mx.argmax(logits, axis=-1).item()))
            logits = model(mx.array([[out[-1]]]), cache=cache)[:, -1, :]
            steps.append(np.array(logits))
        return out, np.stack(steps)

    tokens, logits = greedy()
    linear = sum(isinstance(m, nn.Linear) for _, m in model.named_modules())
    assert use_sgemv_for_one_row(model, sgemv) == linear + 1  # every linear layer and the tied embedding
    got_tokens, got_logits = greedy()
    assert got_tokens == tokens
    assert np.allclose(got_logits, logits, atol=1e-4)


def test_only_float32_matrices_get_the_one_row_path(sgemv: object) -> None:
    layer = _layer(False)
    layer.set_dtype(mx.float16)
    assert use_sgemv_for_one_row(layer, sgemv) == 0
    assert type(layer) is nn.Linear
