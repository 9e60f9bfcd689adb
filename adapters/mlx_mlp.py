"""The feed-forward layers of chat models on MLX's CPU backend: SwiGLU computed by numpy.

A llama-style MLP is down(silu(gate(x)) * up(x)). MLX's CPU backend evaluates the sigmoid inside silu one
element at a time (~28 ns an element here, compiled or not), numpy's vectorised exp ~20x faster: reading a
prompt, the activation took as long as the gate and up products together (~22% of each chunk), and ~1.5
ms of every generated token. So on a CPU the products stay in MLX (BLAS) and numpy computes
silu(g) * u between them, on zero-copy views of MLX's evaluated outputs; only the result is copied back.

Numpy's own BLAS is not used (see adapters/mlx_attention.py). A layer is switched only after it gave the
same output both ways on a probe input, so an MLP whose activation is not SwiGLU keeps its own.
"""

from __future__ import annotations

from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from adapters.mlx_swap import SubclassSwap

_ATTRIBUTES = ("gate_proj", "up_proj", "down_proj")
_PROBE_TOLERANCE = 1e-4


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up, elementwise, by numpy; float32."""
    g = np.asarray(gate, dtype=np.float32)  # evaluates both inputs and views their buffers without a copy
    u = np.asarray(up, dtype=np.float32)
    out = np.negative(g)
    with np.errstate(over="ignore"):  # exp(-g) overflows to inf for g < -88: g / inf is the right -0
        np.exp(out, out=out)
    out += 1.0
    np.divide(g, out, out=out)
    out *= u
    return mx.array(out)


def _feed_forward(self: Any, x: mx.array) -> mx.array:
    return cast(mx.array, self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x))))


def use_numpy_swiglu(model: nn.Module) -> int:
    """Switch every float32 SwiGLU feed-forward layer to the numpy activation; returns how many."""
    swap = SubclassSwap("NumpySwiGLU", {"__call__": _feed_forward})
    switched = 0
    for _, module in model.named_modules():
        if not all(isinstance(getattr(module, a, None), nn.Linear) for a in _ATTRIBUTES):
            continue
        if module.gate_proj.weight.dtype != mx.float32 or not _computes_swiglu(module):
            continue
        swap(module)
        switched += 1
    return switched


def _computes_swiglu(module: Any) -> bool:
    """Whether the layer's own forward pass is down(silu(gate(x)) * up(x)), tried on a probe input."""
    probe = mx.random.normal((1, 3, module.gate_proj.weight.shape[1]), key=mx.random.key(0))
    try:
        own = module(probe)
        ours = _feed_forward(module, probe)
        return bool(mx.allclose(own, ours, rtol=_PROBE_TOLERANCE, atol=_PROBE_TOLERANCE).item())
    except (ValueError, TypeError, RuntimeError):
        return False
