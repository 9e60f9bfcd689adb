from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
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
    expected = np.array(model(PROMPT))[:, -1]
    quantized = sum(isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding) for _, m in model.named_modules())
    calls: list[int] = []
    converted, layout = choose_layout(model, lambda: calls.append(1))
    assert layout.startswith("float32 converted from 4-bit quantized at load, numpy decoder, products by ")
    assert layout.endswith(" (cpu)")
    assert len(calls) == quantized > 0  # the owner thread may serve others after every matrix
    assert all(layer is None for layer in model.model.layers)  # let go as the decoder took each layer
    got = np.array(converted(PROMPT, cache=converted.make_cache()))[:, -1]
    reference, _ = mlx_lm_load(str(quantized_dir))
    dequantized = dequantize_model(reference)
    for ours, theirs in zip(converted.layers, dequantized.model.layers, strict=True):
        attn, mlp = theirs.self_attn, theirs.mlp
        qkv = np.concatenate([np.array(attn.q_proj.weight), np.array(attn.k_proj.weight), np.array(attn.v_proj.weight)])
        assert np.array_equal(ours.qkv, qkv)  # mlx-lm's own dequantization, bit for bit
        assert np.array_equal(
            ours.gate_up, np.concatenate([np.array(mlp.gate_proj.weight), np.array(mlp.up_proj.weight)])
        )
        assert np.array_equal(ours.out, np.array(attn.o_proj.weight))
        assert np.array_equal(ours.down, np.array(mlp.down_proj.weight))
    assert np.array_equal(converted.embed, np.array(dequantized.model.embed_tokens.weight))
    assert np.allclose(got, np.array(dequantized(PROMPT))[:, -1], atol=1e-4)  # the numpy decoder: same to rounding
    # MLX's quantized kernel computes in a lower precision; the predictions stay the same.
    assert np.abs(got - expected).max() < 0.05 and (got.argmax(-1) == expected.argmax(-1)).all()


def test_a_float32_model_keeps_its_weights_in_the_numpy_decoder(tmp_path: Path) -> None:
    model, _ = mlx_lm_load(str(build_tiny_lm(tmp_path / "lm")))
    expected = np.array(model(PROMPT))[:, -1]
    converted, layout = choose_layout(model)
    assert layout.startswith("float32 as stored, numpy decoder, products by ")
    assert np.allclose(np.array(converted(PROMPT))[:, -1], expected, atol=1e-4)


def test_a_config_the_numpy_decoder_does_not_compute_keeps_mlx_lms_model_with_numpy_softmax_and_swiglu(
    tmp_path: Path,
) -> None:
    model, _ = mlx_lm_load(str(build_tiny_lm(tmp_path / "lm")))
    expected = np.array(model(PROMPT))
    model.args.attention_bias = True  # what the decoder checks; the model itself is unchanged
    converted, layout = choose_layout(model)
    assert layout.startswith(
        "float32 as stored, mlx-lm model (numpy decoder: attention or MLP biases not supported), "
        "numpy softmax and SwiGLU"
    )
    assert converted is model
    assert np.allclose(np.array(converted(PROMPT)), expected, atol=1e-5)


FREED_HEAP = """
import ctypes
import re

from adapters.mlx_layout import return_freed_memory

def rss_mib():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024

# glibc as it stands after a model's weights were freed: blocks below its (raised) mmap threshold come from
# the heap, and free() gives no heap pages back by itself. Set outright, so the test does not depend on
# what the imports before it allocated and freed.
libc = ctypes.CDLL(None)
libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
blocks = [bytearray(1 << 20) for _ in range(256)]
del blocks
held = rss_mib()
return_freed_memory()
print(held, rss_mib())
"""


def test_the_memory_a_conversion_frees_goes_back_to_the_system() -> None:
    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("glibc's malloc_trim is not here")
    run = subprocess.run([sys.executable, "-c", FREED_HEAP], capture_output=True, text=True, timeout=60, check=True)
    held, after = map(int, run.stdout.split())
    assert held - after >= 128, (held, after)  # of the 256 MiB freed
