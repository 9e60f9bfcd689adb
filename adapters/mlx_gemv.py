"""One-row matrix products of chat models on a CPU, through BLAS's matrix-vector routine.

MLX hands every float32 product to cblas_sgemm, a single row times a matrix included, and generating a
token is nothing but such products: the weights are read from memory once a token. OpenBLAS 0.3.21
(Debian's) runs a one-row sgemm through its general path, packing the matrix first: a 1536x576 weight read
from memory took ~0.31-0.44 ms that way here and ~0.14-0.22 ms through cblas_sgemv, the 49,152x576 output
projection ~25 ms against ~10 ms. So the linear layers and the tied output projection of a float32 chat
model call cblas_sgemv of the OpenBLAS that MLX uses (one library, one thread pool) on zero-copy views of
MLX's weights when their input is one row; prompt chunks (many rows) keep MLX's product.
"""

from __future__ import annotations

from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from adapters._cblas import Products
from adapters.mlx_swap import SubclassSwap


class _RowProduct:
    """y = W x for one row x, W an (out, in) float32 matrix held by an MLX array that stays alive here."""

    def __init__(self, products: Products, weight: mx.array) -> None:
        self._products = products  # a one-row linear product is cblas_sgemv (adapters/_cblas.py)
        self.weight = weight  # the MLX array whose buffer the view below reads
        self._matrix = np.asarray(weight)
        self.out_dims, self.in_dims = self._matrix.shape

    def __call__(self, x: mx.array, bias: mx.array | None = None) -> mx.array:
        row = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(1, self.in_dims))
        y = np.array(bias, dtype=np.float32) if bias is not None else np.empty(self.out_dims, dtype=np.float32)
        self._products.linear(row, self._matrix, y.reshape(1, self.out_dims), 1.0 if bias is not None else 0.0)
        return mx.array(y).reshape(*x.shape[:-1], self.out_dims)


def _usable(weight: mx.array) -> bool:
    return weight.dtype == mx.float32 and weight.ndim == 2 and np.asarray(weight).flags["C_CONTIGUOUS"]


def _linear_call(self: Any, x: mx.array) -> mx.array:
    product: _RowProduct = self._row_product
    if x.size != product.in_dims or self.weight is not product.weight:
        return cast(mx.array, super(type(self), self).__call__(x))
    return product(x, self.bias if "bias" in self else None)


def _as_linear(self: Any, x: mx.array) -> mx.array:
    product: _RowProduct = self._row_product
    if x.size != product.in_dims or self.weight is not product.weight:
        return cast(mx.array, super(type(self), self).as_linear(x))
    return product(x)


def use_sgemv_for_one_row(model: nn.Module, products: Products) -> int:
    """Give every float32 linear layer and embedding (tied output projection) of `model` the one-row path."""
    linear = SubclassSwap("RowProduct", {"__call__": _linear_call})
    embedding = SubclassSwap("RowProduct", {"as_linear": _as_linear})
    switched = 0
    for _, module in model.named_modules():
        if isinstance(module, nn.Linear):
            swap = linear
        elif isinstance(module, nn.Embedding):
            swap = embedding
        else:
            continue
        if not _usable(module.weight):
            continue
        module._row_product = _RowProduct(products, module.weight)
        swap(module)
        switched += 1
    return switched
