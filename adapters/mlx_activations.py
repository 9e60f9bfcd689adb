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

from adapters.errors import ModelLoadError

# Eigen's rational erf on [-4, 4] (beyond it erf is +/-1 in float32): max error 6.5e-8 in float64.
# Transcendentals are 35-65x slower than an add on MLX CPU; this keeps GELU to multiply-adds.
_ERF_NUM = (
    -1.60960333262415e-02,
    -2.95459980854025e-03,
    -7.34990630326855e-04,
    -5.69250639462346e-05,
    -2.10102402082508e-06,
    2.77068142495902e-08,
    -2.72614225801306e-10,
)
_ERF_DEN = (
    -1.42647390514189e-02,
    -7.37332916720468e-03,
    -1.68282697438203e-03,
    -2.13374055278905e-04,
    -1.45660718464996e-05,
)
_SQRT_HALF = 0.7071067811865476


def erf_rational(x: mx.array) -> mx.array:
    z = mx.clip(x, -4.0, 4.0)
    z2 = z * z
    num: mx.array | float = _ERF_NUM[-1]
    for c in reversed(_ERF_NUM[:-1]):
        num = num * z2 + c
    den: mx.array | float = _ERF_DEN[-1]
    for c in reversed(_ERF_DEN[:-1]):
        den = den * z2 + c
    return z * num / den


def gelu_fast(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + erf_rational(x * _SQRT_HALF))


def gelu_exact(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + mx.erf(x * _SQRT_HALF))


Activation = Callable[[mx.array], mx.array]


def activation(hidden_act: str, fast_gelu: bool) -> Activation:
    if hidden_act == "gelu":
        return _compiled(gelu_fast) if fast_gelu else gelu_exact
    if hidden_act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return cast(Activation, nn.gelu_approx)
    if hidden_act == "relu":
        return cast(Activation, nn.relu)
    raise ModelLoadError(f"unsupported hidden_act {hidden_act!r} in config.json (supported: gelu, gelu_new, relu)")


def _compiled(fn: Activation) -> Activation:
    """Fuse the elementwise chain when MLX can compile here; the plain function otherwise."""
    try:
        compiled = mx.compile(fn)
        mx.eval(compiled(mx.zeros((2, 3))))
    except Exception:  # no compiler toolchain: the unfused chain gives the same numbers
        return fn
    return compiled
