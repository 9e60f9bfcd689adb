"""The decoder of llama-style chat models in numpy, for float32 on a CPU.

Run through MLX on a CPU, a generated token of SmolLM2-135M took ~55-62 ms: ~30 ms reading the weights
through BLAS, the rest ~120 hand-overs between MLX's small operations (norms, rotary embeddings, the KV
cache, attention) and numpy or BLAS, ~0.2 ms each. Here the whole forward pass stays in numpy: the
products go to the BLAS in front of MLX through CBLAS (adapters/_cblas.py; sgemv for one row), with the
residuals added by the products themselves, queries, keys and values from one fused matrix, the gate and
up projections from another, and the KV cache in preallocated numpy arrays. Only the last position's
logits are computed, and none while a prompt is read (`read`).

Only what this code computes exactly is taken: a llama model (RMSNorm, rotary embeddings without scaling,
grouped KV heads, SwiGLU, no biases, full attention in every layer); anything else keeps mlx-lm's model
(`numpy_decoder` says why).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from adapters._cblas import Products

_GROW = 256  # KV cache capacity grows by this many tokens
_KEPT_SCRATCH = 16 << 20  # attention scores scratch kept between calls, in float32 elements (64 MB)


@dataclass(frozen=True, slots=True)
class Layer:
    attn_norm: np.ndarray  # (hidden,)
    qkv: np.ndarray  # (heads * head_dim + 2 * kv_heads * head_dim, hidden): queries, keys, values
    out: np.ndarray  # (hidden, heads * head_dim)
    mlp_norm: np.ndarray
    gate_up: np.ndarray  # (2 * intermediate, hidden): gate rows, then up rows
    down: np.ndarray  # (hidden, intermediate)


class NumpyKVCache:
    """One layer's keys and values, (kv_heads, capacity, head_dim) each, the first `offset` positions valid."""

    def __init__(self, kv_heads: int, head_dim: int) -> None:
        self.keys = np.empty((kv_heads, 0, head_dim), np.float32)
        self.values = np.empty((kv_heads, 0, head_dim), np.float32)
        self.offset = 0

    def reserve(self, tokens: int) -> None:
        """Room for `tokens` more positions, growing by whole steps (the valid part is copied)."""
        need = self.offset + tokens
        if need <= self.keys.shape[1]:
            return
        capacity = (need + _GROW - 1) // _GROW * _GROW
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = np.empty((old.shape[0], capacity, old.shape[2]), np.float32)
            new[:, : self.offset] = old[:, : self.offset]
            setattr(self, name, new)

    @property
    def state(self) -> list[mx.array]:
        return []  # nothing for MLX to evaluate: numpy computed it already

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self.offset, n)
        self.offset -= n
        return n


def _rope_tables(head_dim: int, base: float, positions: int) -> tuple[np.ndarray, np.ndarray]:
    freqs = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(positions, dtype=np.float64)[:, None] * freqs[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class NumpyLlama:
    """A llama decoder's forward pass over float32 numpy weights; called like mlx-lm's model."""

    def __init__(
        self,
        embed: np.ndarray,
        layers: list[Layer],
        norm: np.ndarray,
        head: np.ndarray,
        *,
        config: dict[str, Any],
        products: Products,
    ) -> None:
        self.embed, self.layers, self.norm, self.head = embed, layers, norm, head
        self.heads, self.kv_heads = int(config["heads"]), int(config["kv_heads"])
        self.head_dim, self.eps = int(config["head_dim"]), np.float32(config["eps"])
        self.traditional = bool(config["traditional"])
        self.max_positions = int(config["max_positions"])
        self.products = products
        cos, sin = _rope_tables(self.head_dim, float(config["rope_theta"]), self.max_positions)
        self._cos, self._sin = cos, sin
        self._scale = np.float32(self.head_dim**-0.5)
        self._scratch = np.empty(0, np.float32)

    def make_cache(self) -> list[NumpyKVCache]:
        return [NumpyKVCache(self.kv_heads, self.head_dim) for _ in self.layers]

    def __call__(self, inputs: Any, cache: list[NumpyKVCache] | None = None, **_: Any) -> mx.array:
        """Logits (1, 1, vocab) of the last position of `inputs` (1, tokens), the cache extended by them."""
        x = self._forward(inputs, self.make_cache() if cache is None else cache)
        h = np.empty((1, x.shape[1]), np.float32)
        self._rms_norm(x[-1:], self.norm, h)
        logits = np.empty((1, self.head.shape[0]), np.float32)
        self.products.linear(h, self.head, logits, 0.0)
        return mx.array(logits)[None]

    def read(self, inputs: Any, cache: list[NumpyKVCache]) -> None:
        """Extend the cache by `inputs` (1, tokens) without computing any logits (reading a prompt)."""
        self._forward(inputs, cache)

    def _forward(self, inputs: Any, cache: list[NumpyKVCache]) -> np.ndarray:
        ids = np.asarray(inputs, dtype=np.int64).reshape(-1)
        tokens, offset = ids.size, cache[0].offset
        if offset + tokens > self.max_positions:
            raise ValueError(f"{offset + tokens} positions exceed the model's {self.max_positions}")
        x = self.embed[ids]  # a fresh (tokens, hidden) array: the residual stream, updated in place
        h = np.empty_like(x)
        qkv = np.empty((tokens, self.layers[0].qkv.shape[0]), np.float32)
        context = np.empty((tokens, self.heads * self.head_dim), np.float32)
        inner = self.layers[0].down.shape[1]
        gate_up = np.empty((tokens, 2 * inner), np.float32)
        act = np.empty((tokens, inner), np.float32)
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            self._rms_norm(x, layer.attn_norm, h)
            self.products.linear(h, layer.qkv, qkv, 0.0)
            self._attention(qkv, layer_cache, context)
            self.products.linear(context, layer.out, x, 1.0)
            self._rms_norm(x, layer.mlp_norm, h)
            self.products.linear(h, layer.gate_up, gate_up, 0.0)
            _swiglu(gate_up[:, :inner], gate_up[:, inner:], act)
            self.products.linear(act, layer.down, x, 1.0)
        return x

    def _rms_norm(self, x: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
        rows = np.einsum("ij,ij->i", x, x)
        rows *= np.float32(1.0 / x.shape[1])
        rows += self.eps
        np.sqrt(rows, out=rows)
        np.divide(x, rows[:, None], out=out)
        out *= weight

    def _rope(self, x: np.ndarray, start: int, out: np.ndarray, scale: np.float32 | None = None) -> None:
        """Rotary embedding of x (tokens, ..., head_dim) at positions start.., written to `out` (same shape)."""
        tokens = x.shape[0]
        shape = (tokens,) + (1,) * (x.ndim - 2) + (self.head_dim // 2,)
        cos = self._cos[start : start + tokens].reshape(shape)
        sin = self._sin[start : start + tokens].reshape(shape)
        if scale is not None:
            cos, sin = cos * scale, sin * scale
        half = self.head_dim // 2
        if self.traditional:
            x0, x1, o0, o1 = x[..., 0::2], x[..., 1::2], out[..., 0::2], out[..., 1::2]
        else:
            x0, x1, o0, o1 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
        np.multiply(x0, cos, out=o0)
        o0 -= x1 * sin
        np.multiply(x0, sin, out=o1)
        o1 += x1 * cos

    def _attention(self, qkv: np.ndarray, cache: NumpyKVCache, context: np.ndarray) -> None:
        tokens, d, kv = qkv.shape[0], self.head_dim, self.kv_heads
        group = self.heads // kv
        start = cache.offset
        cache.reserve(tokens)
        q_width, k_width = self.heads * d, kv * d
        # Queries as (kv_heads, tokens, group, head_dim): each KV head's queries form one matrix, row (t, j).
        queries = np.empty((kv, tokens, group, d), np.float32)
        self._rope(qkv[:, :q_width].reshape(tokens, kv, group, d), start, queries.transpose(1, 0, 2, 3), self._scale)
        end = start + tokens
        self._rope(
            qkv[:, q_width : q_width + k_width].reshape(tokens, kv, d),
            start,
            cache.keys[:, start:end].transpose(1, 0, 2),
        )
        cache.values[:, start:end] = qkv[:, q_width + k_width :].reshape(tokens, kv, d).transpose(1, 0, 2)
        cache.offset = end
        rows = tokens * group
        scores = self._scores(rows * end).reshape(rows, end)
        out = np.empty((rows, d), np.float32)
        mask = np.triu(np.ones((tokens, tokens), dtype=bool), 1)[:, None, :] if tokens > 1 else None
        for head in range(kv):
            self.products.linear(queries[head].reshape(rows, d), cache.keys[head, :end], scores, 0.0)
            if mask is not None:
                np.copyto(scores.reshape(tokens, group, end)[:, :, start:], np.float32(-np.inf), where=mask)
            _softmax(scores)
            self.products.matmul(scores, cache.values[head, :end], out)
            context[:, head * group * d : (head + 1) * group * d] = out.reshape(tokens, group * d)

    def _scores(self, size: int) -> np.ndarray:
        if size <= self._scratch.size:
            return self._scratch[:size]
        fresh = np.empty(size, np.float32)
        if size <= _KEPT_SCRATCH:
            self._scratch = fresh
        return fresh


def _softmax(scores: np.ndarray) -> None:
    peak = scores.max(axis=1, keepdims=True)
    scores -= peak
    np.exp(scores, out=scores)
    total = scores.sum(axis=1, keepdims=True)
    scores /= total


def _swiglu(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """out <- silu(gate) * up."""
    np.negative(gate, out=out)
    with np.errstate(over="ignore"):  # exp(-g) overflows to inf for g < -88: g / inf is the right -0
        np.exp(out, out=out)
    out += np.float32(1.0)
    np.divide(gate, out, out=out)
    out *= up


def _unsupported(model: Any) -> str | None:
    """Why the numpy decoder cannot stand in for `model` exactly, or None when it can."""
    args = getattr(model, "args", None)
    if getattr(model, "model_type", None) != "llama" or args is None:
        return f"{getattr(model, 'model_type', type(model).__name__)} architecture"
    checks = {
        "rope scaling": args.rope_scaling is not None,
        "attention or MLP biases": bool(args.attention_bias or args.mlp_bias),
        "sliding-window layers": any(t != "full_attention" for t in args.layer_types or ()),
        "heads not a multiple of KV heads": args.num_attention_heads % args.num_key_value_heads != 0,
    }
    found = [what for what, present in checks.items() if present]
    if found:
        return ", ".join(found)
    modules = [m for layer in model.model.layers for m in _layer_modules(layer)]
    if not all(isinstance(m, QUANTIZED) or _floating_matrix(m.weight) for m in modules):
        return "weights neither floating point nor quantized matrices"
    return None


QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding)


def _floating_matrix(weight: mx.array) -> bool:
    return bool(mx.issubdtype(weight.dtype, mx.floating)) and weight.ndim in (1, 2)


def _layer_modules(layer: Any) -> list[Any]:
    attn, mlp = layer.self_attn, layer.mlp
    return [
        layer.input_layernorm,
        attn.q_proj,
        attn.k_proj,
        attn.v_proj,
        attn.o_proj,
        layer.post_attention_layernorm,
        mlp.gate_proj,
        mlp.up_proj,
        mlp.down_proj,
    ]


def float32_weight(module: Any, rows: slice = slice(None)) -> mx.array:
    """A module's weight (those rows of it) in float32, evaluated; dequantized by MLX when it is quantized."""
    if isinstance(module, QUANTIZED):
        biases = getattr(module, "biases", None)
        weight = mx.dequantize(
            module.weight[rows],
            module.scales[rows],
            None if biases is None else biases[rows],
            group_size=module.group_size,
            bits=module.bits,
            mode=getattr(module, "mode", "affine"),
            dtype=mx.float32,
        )
    else:
        weight = module.weight[rows].astype(mx.float32)
    mx.eval(weight)
    return weight


_ROWS_AT_ONCE = 2048  # rows dequantized at once: MLX's temporaries stay a few MB, not a whole embedding's


class _Weights:
    """Modules' weights as float32 numpy arrays; `between()` after each quantized one."""

    def __init__(self, between: Callable[[], object]) -> None:
        self.between = between

    def __call__(self, module: Any) -> np.ndarray:
        if not isinstance(module, QUANTIZED):
            # A view of the MLX array's buffer (it keeps the array alive), copied only if not contiguous.
            return np.ascontiguousarray(np.asarray(float32_weight(module)))
        return self.stacked([module])

    def stacked(self, modules: list[Any]) -> np.ndarray:
        """The modules' weights one under the other in one array, written in place part by part."""
        rows = [int(m.weight.shape[0]) for m in modules]
        out = np.empty((sum(rows), self._columns(modules[0])), np.float32)
        start = 0
        for module, n in zip(modules, rows, strict=True):
            self._fill(module, out[start : start + n])
            start += n
        return out

    def _fill(self, module: Any, out: np.ndarray) -> None:
        if not isinstance(module, QUANTIZED):
            out[:] = np.asarray(float32_weight(module))
            return
        for start in range(0, out.shape[0], _ROWS_AT_ONCE):
            out[start : start + _ROWS_AT_ONCE] = np.asarray(float32_weight(module, slice(start, start + _ROWS_AT_ONCE)))
        self.between()

    @staticmethod
    def _columns(module: Any) -> int:
        if isinstance(module, QUANTIZED):  # packed: the width is what one dequantized row has
            return int(float32_weight(module, slice(0, 1)).shape[1])
        return int(module.weight.shape[1])


def _nothing() -> object:
    return None


def numpy_decoder(
    model: Any, products: Products, between: Callable[[], object] = _nothing, *, release: bool = False
) -> tuple[NumpyLlama | None, str]:
    """The numpy decoder equal to a float32 mlx-lm model, or None and why it cannot be.

    Quantized or half-precision weights are taken in float32, one matrix at a time. With `release`, each of
    `model`'s layers is let go once its numpy matrices are built, so a load never holds the model twice
    (SmolLM2-135M: ~1.0 GB at the peak otherwise); `model` is then no longer usable.
    """
    reason = _unsupported(model)
    if reason is not None:
        return None, reason
    args = model.args
    weights = _Weights(between)
    # The embedding first: at the end it would add its copy to the peak of all the layers' copies.
    embed = weights(model.model.embed_tokens)
    stack = model.model.layers
    layers = []
    for i, layer in enumerate(stack):
        norm1, q, k, v, o, norm2, gate, up, down = _layer_modules(layer)
        layers.append(
            Layer(
                attn_norm=weights(norm1),
                qkv=weights.stacked([q, k, v]),
                out=weights(o),
                mlp_norm=weights(norm2),
                gate_up=weights.stacked([gate, up]),
                down=weights(down),
            )
        )
        if release:
            stack[i] = None
            mx.clear_cache()
    head = embed if args.tie_word_embeddings else weights(model.lm_head)
    config = {
        "heads": args.num_attention_heads,
        "kv_heads": args.num_key_value_heads,
        "head_dim": args.head_dim or args.hidden_size // args.num_attention_heads,
        "eps": args.rms_norm_eps,
        "traditional": args.rope_traditional,
        "rope_theta": args.rope_theta,
        "max_positions": args.max_position_embeddings or 4096,
    }
    decoder = NumpyLlama(embed, layers, weights(model.model.norm), head, config=config, products=products)
    return decoder, f"numpy decoder, products by {products.name}"
