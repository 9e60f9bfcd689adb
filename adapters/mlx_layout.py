"""The weight layout a chat model runs in, chosen per device at load.

MLX's CPU backend has no fast kernel for quantized matrices, while float32 matrix products go to BLAS: on
a CPU a quantized model is dequantized to float32 in memory (SmolLM2-135M: ~14x faster prompt reading and
~2x faster generation here, for ~540 MB instead of ~100 MB), its attention softmax and SwiGLU activation
move to numpy (adapters/mlx_attention.py, adapters/mlx_mlp.py) and, with OpenBLAS in front of MLX, its
one-row products (every generated token) go to cblas_sgemv (adapters/mlx_gemv.py). A llama model the
numpy decoder computes exactly (adapters/numpy_llama.py) leaves MLX altogether on a CPU: its float32 weights
run there (a generated token in ~0.57x the time, a prompt read ~1.4x as fast at 2,000 tokens, measured side
by side). On Metal or CUDA the quantized kernels are fast and the weights stay as stored.

Dequantizing takes a couple of seconds on a small CPU, so it goes one matrix at a time and calls
`between()` after each: the owner thread serves the embeddings waiting meanwhile. The numpy decoder takes
each matrix straight from the quantized pack and lets go of each MLX layer once it is converted, so the
load never holds the model in float32 twice.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from adapters._blas import loaded_openblas
from adapters._cblas import CblasProducts, products_for
from adapters.mlx_attention import use_numpy_softmax
from adapters.mlx_gemv import use_sgemv_for_one_row
from adapters.mlx_mlp import use_numpy_swiglu
from adapters.numpy_llama import QUANTIZED, float32_weight, numpy_decoder


def _nothing() -> object:
    return None


def choose_layout(
    model: nn.Module, between: Callable[[], object] = _nothing, *, whole_numpy: bool = True
) -> tuple[Any, str]:
    """The model in the layout for this device, and a line for health saying which.

    `whole_numpy=False` keeps mlx-lm's model on a CPU even where the numpy decoder could run (to compare them).
    """
    quantized = [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZED)]
    if quantized:
        stored = "/".join(str(b) for b in sorted({m.bits for _, m in quantized})) + "-bit quantized"
    else:
        stored = str(next(iter(_dtypes(model)), "float32")).removeprefix("mlx.core.")
    if mx.default_device() != mx.cpu:
        return model, f"{stored} as stored (gpu)"
    weights = "float32 as stored" if stored == "float32" else f"float32 converted from {stored} at load"
    if whole_numpy:
        decoder, said = numpy_decoder(model, products_for(loaded_openblas()), between, release=True)
        if decoder is not None:
            return decoder, f"{weights}, {said} (cpu)"
        weights += f", mlx-lm model (numpy decoder: {said} not supported)"
    for name, module in quantized:
        model.update_modules(tree_unflatten([(name, _float32(module))]))
        between()
    if _dtypes(model) != {mx.float32}:
        model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    switched = (("softmax", use_numpy_softmax(model)), ("SwiGLU", use_numpy_swiglu(model)))
    numpy_parts = [part for part, n in switched if n]
    computed = f"numpy {' and '.join(numpy_parts)}" if numpy_parts else "mlx attention"
    library = loaded_openblas()
    if library is not None and use_sgemv_for_one_row(model, CblasProducts(library)):
        computed += ", sgemv for one row"
    return model, f"{weights}, {computed} (cpu)"


def return_freed_memory() -> None:
    """Give the memory a conversion freed back to the system: MLX's buffer cache, then the C heap's free pages.

    glibc raises its mmap threshold as large blocks are freed, so the quantized and float32 weights a
    conversion drops end up as free pages on the heap that the process keeps; SmolLM2 kept ~330 MB that way
    after its numpy decoder took its fused copies (VmRSS 970 -> 637 MiB with `malloc_trim`).
    """
    mx.clear_cache()
    if not sys.platform.startswith("linux"):
        return
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only; musl has none
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        trim(0)


def _float32(module: Any) -> nn.Module:
    """A float32 Linear or Embedding equal to a quantized one, evaluated now."""
    weight = float32_weight(module)
    out_dims, in_dims = weight.shape
    if isinstance(module, nn.QuantizedEmbedding):
        plain: nn.Module = nn.Embedding(out_dims, in_dims)
    else:
        plain = nn.Linear(in_dims, out_dims, bias="bias" in module)
        if "bias" in module:
            plain.bias = module.bias.astype(mx.float32)
    plain.weight = weight
    mx.eval(plain.parameters())
    return plain


def _dtypes(model: nn.Module) -> set[Any]:
    return {v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)}
