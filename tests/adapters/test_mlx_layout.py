from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load as mlx_lm_load
from mlx_lm.utils import dequantize_model

from adapters.mlx_gguf import convert_gguf
from adapters.mlx_layout import choose_layout
from tests.support.tiny_lm import build_tiny_gguf, build_tiny_lm

PROMPT = mx.array([[5, 17, 42, 99, 100, 7, 64, 31, 250, 12]])


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("q4")
    convert_gguf(build_tiny_gguf(root / "tiny.gguf"), root / "lm")
    return root / "lm"


def test_a_quantized_model_runs_in_float32_on_a_cpu_with_the_quantized_models_outputs(quantized_dir: Path) -> None:
    model, _ = mlx_lm_load(str(quantized_dir))
    expected = np.array(model(PROMPT))
    quantized = sum(isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding) for _, m in model.named_modules())
    calls: list[int] = []
    converted, layout = choose_layout(model, lambda: calls.append(1))
    assert layout == "float32 converted from 4-bit quantized at load, numpy softmax and SwiGLU (cpu)"
    assert len(calls) == quantized > 0  # the owner thread may serve others after every matrix
    assert not any(isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding) for _, m in converted.named_modules())
    got = np.array(converted(PROMPT))
    reference, _ = mlx_lm_load(str(quantized_dir))
    dequantized = dequantize_model(reference)
    ours, theirs = dict(tree_flatten(converted.parameters())), dict(tree_flatten(dequantized.parameters()))
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(np.array(ours[k]), np.array(theirs[k])) for k in ours)  # mlx-lm's own dequantization
    assert np.allclose(got, np.array(dequantized(PROMPT)), atol=1e-5)  # numpy SwiGLU: the same to rounding
    # MLX's quantized kernel computes in a lower precision; the predictions stay the same.
    assert np.abs(got - expected).max() < 0.05 and (got.argmax(-1) == expected.argmax(-1)).all()


def test_a_float32_model_keeps_its_weights_and_gets_the_numpy_softmax(tmp_path: Path) -> None:
    model, _ = mlx_lm_load(str(build_tiny_lm(tmp_path / "lm")))
    expected = np.array(model(PROMPT))
    converted, layout = choose_layout(model)
    assert layout == "float32 as stored, numpy softmax and SwiGLU (cpu)"
    assert np.allclose(np.array(converted(PROMPT)), expected, atol=1e-5)
