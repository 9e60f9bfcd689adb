"""Activations for the BERT encoders on MLX, GELU above all.

Transcendental functions (erf, exp, tanh) are 35-65x slower than an add on MLX's CPU backend, and exact-erf
GELU dominated short batches; a rational approximation of erf keeps it to multiply-adds (embedding cosine
>= 0.999999 against exact GELU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import mlx.core as mx
import mlx.nn as nn

from adapters.bert_config import ERF_DEN, ERF_NUM, SQRT_HALF
from adapters.errors import ModelLoadError

# Transcendentals are 35-65x slower than an add on MLX CPU: GELU uses the rational erf (adapters/bert_config.py).


def erf_rational(x: mx.array) -> mx.array:
    z = mx.clip(x, -4.0, 4.0)
    z2 = z * z
    num: mx.array | float = ERF_NUM[-1]
    for c in reversed(ERF_NUM[:-1]):
        num = num * z2 + c
    den: mx.array | float = ERF_DEN[-1]
    for c in reversed(ERF_DEN[:-1]):
        den = den * z2 + c
    return z * num / den


def gelu_fast(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + erf_rational(x * SQRT_HALF))


def gelu_exact(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + mx.erf(x * SQRT_HALF))


Activation = Callable[[mx.array], mx.array]
BiasedActivation = Callable[[mx.array, mx.array], mx.array]  # act(y + bias)
Residual = Callable[[mx.array, mx.array, mx.array], mx.array]  # y + bias + x


def activation(hidden_act: str, fast_gelu: bool) -> Activation:
    if hidden_act == "gelu":
        return gelu_fast if fast_gelu else gelu_exact
    if hidden_act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return cast(Activation, nn.gelu_approx)
    if hidden_act == "relu":
        return cast(Activation, nn.relu)
    raise ModelLoadError(f"unsupported hidden_act {hidden_act!r} in config.json (supported: gelu, gelu_new, relu)")


def biased(act: Activation) -> BiasedActivation:
    """act(y + bias) as one compiled loop: a linear layer's bias added in the activation's pass over y."""

    def fn(y: mx.array, bias: mx.array) -> mx.array:
        return act(y + bias)

    return _compiled(fn, 2)


def residual() -> Residual:
    """y + bias + x in one compiled loop: a projection's bias and the residual connection together."""

    def fn(y: mx.array, bias: mx.array, x: mx.array) -> mx.array:
        return y + bias + x

    return _compiled(fn, 3)


def _compiled(fn: Callable[..., mx.array], arity: int) -> Callable[..., mx.array]:
    """Fuse the elementwise chain when MLX can compile here; the plain function otherwise."""
    try:
        compiled = mx.compile(fn)
        mx.eval(compiled(*[mx.zeros((2, 3))] * arity))
    except Exception:  # no compiler toolchain: the unfused chain gives the same numbers
        return fn
    return compiled
