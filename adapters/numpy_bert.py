"""The BERT encoders' forward pass in numpy, for float32 on a CPU (~0.8x the time of the MLX pass there).

MLX's CPU elementwise loops are scalar (GELU over a batch's 1,536-wide feed-forward activation took ~3-4 ms
a layer) and each of its products and softmax hand-overs carries overhead. Here the whole forward pass stays
in numpy: products into buffers kept per batch shape with the biases and residuals already in them, layer
norms in place, and GELU (x times a logistic of an odd polynomial, within 2e-7 of erf's GELU) over row blocks
that stay in the core's cache. The products themselves go where adapters/_gemm.py says: the OpenBLAS in front
of MLX when there is one, so the process keeps one BLAS thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from adapters._gemm import Gemm, numpy_gemm
from adapters.errors import ModelLoadError

# GELU(x) = x * Phi(x), Phi the standard normal CDF, written as x / (1 + exp(-q(x))) with q = logit(Phi): q is
# odd and smooth, so q(x) = x * R(x^2) with R a degree-6 polynomial (coefficients below, highest power first).
# R was fitted to logit(Phi(x)) / x on [0, 6] minimising the largest error it makes in GELU (6.7e-8 in float64).
# R is positive for every x (its least value is R(0) = 2 sqrt(2 / pi)), so far out exp saturates the right way.
# Eleven multiply-adds, one exp (vectorised by numpy) and one divide: 15 passes where erf's rational form took 26.
_GELU_R = (
    3.61125427720591e-09,
    -2.6689378260448494e-07,
    7.938234599340914e-06,
    -0.00011048043200857498,
    -6.625960378360337e-05,
    0.07266856652587553,
    1.5957684323805268,
)
_MINUS_R = tuple(np.float32(-c) for c in _GELU_R)  # -q(x) comes out of the polynomial: no negation pass
_COLUMN_MAX_WIDTH = 32  # rows up to this long take their maxima column by column (softmax_rows)
_BLOCK_ELEMENTS = 1 << 15  # an activation block and its scratch stay in a core's L2 cache
# Buffers kept between calls: a few batch shapes, this many bytes in all. A batch of long texts (64 x 256
# tokens: ~200 MB of attention scores) gets buffers for that call only.
_KEPT_SHAPES, _KEPT_BYTES = 8, 64 << 20


class Gelu:
    """Exact (erf) GELU in place within 1e-6 (relative past |x| = 1), block by block, with scratch reused."""

    def __init__(self) -> None:
        self._scratch = np.empty((2, _BLOCK_ELEMENTS), dtype=np.float32)

    def __call__(self, y: np.ndarray) -> None:
        flat = y.reshape(-1)
        # exp(-q) overflows to inf for x below about -9: x / inf is the -0.0 GELU tends to there.
        with np.errstate(over="ignore"):
            for start in range(0, flat.size, _BLOCK_ELEMENTS):
                block = flat[start : start + _BLOCK_ELEMENTS]
                x2, e = (s[: block.size] for s in self._scratch)
                np.multiply(block, block, out=x2)
                np.multiply(x2, _MINUS_R[0], out=e)
                for c in _MINUS_R[1:-1]:
                    e += c
                    e *= x2
                e += _MINUS_R[-1]
                e *= block
                np.exp(e, out=e)
                e += np.float32(1.0)
                np.divide(block, e, out=block)


def _gelu_tanh(y: np.ndarray) -> None:
    inner = y * y
    inner *= np.float32(0.044715)
    inner += np.float32(1.0)
    inner *= y
    inner *= np.float32(np.sqrt(2.0 / np.pi))
    np.tanh(inner, out=inner)
    inner += np.float32(1.0)
    inner *= np.float32(0.5)
    y *= inner


def _relu(y: np.ndarray) -> None:
    np.maximum(y, np.float32(0.0), out=y)


def activation(hidden_act: str) -> Callable[[np.ndarray], None]:
    """The config's activation, applied in place."""
    if hidden_act == "gelu":
        return Gelu()
    if hidden_act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return _gelu_tanh
    if hidden_act == "relu":
        return _relu
    raise ModelLoadError(f"unsupported hidden_act {hidden_act!r} in config.json (supported: gelu, gelu_new, relu)")


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, scratch: np.ndarray) -> None:
    """x <- LayerNorm(x) over the last axis, in place; `scratch` holds one value per row.

    Row means by a product with a vector of 1/width, and a multiply by 1/std where a divide costs about two
    multiplies: ~20% faster than np.mean and a divide over 384-wide rows."""
    rows = scratch[:, 0]
    np.matmul(x, np.full(x.shape[1], 1.0 / x.shape[1], np.float32), out=rows)
    x -= scratch
    np.einsum("ij,ij->i", x, x, out=rows)
    rows *= np.float32(1.0 / x.shape[-1])
    rows += np.float32(eps)
    np.sqrt(rows, out=rows)
    np.reciprocal(rows, out=rows)
    x *= scratch
    x *= weight
    x += bias


def softmax_rows(scores: np.ndarray, scratch: np.ndarray) -> None:
    """scores (rows, width) <- softmax of each row, in place; `scratch` holds one value per row.

    Attention rows are short (a text's tokens) and many (inputs x heads x tokens): numpy's reductions along a
    short last axis cost ~90 ns a row, so short rows' maxima come from elementwise maxima of their columns, and
    every row's sum from a product with a vector of ones (~10x faster for 13-token rows, 5,000 of them)."""
    width = scores.shape[1]
    if 1 < width <= _COLUMN_MAX_WIDTH:
        np.maximum(scores[:, 0], scores[:, 1], out=scratch)
        for j in range(2, width):
            np.maximum(scratch, scores[:, j], out=scratch)
    else:
        np.max(scores, axis=1, out=scratch)
    rows = scratch[:, None]
    scores -= rows
    np.exp(scores, out=scores)
    np.matmul(scores, np.ones(width, np.float32), out=scratch)
    scores /= rows


@dataclass(frozen=True, slots=True)
class LayerWeights:
    qkv: np.ndarray  # (3 * hidden, hidden), (out, in) like every linear weight: queries, keys, values
    qkv_bias: np.ndarray
    attn_out: np.ndarray  # (hidden, hidden)
    attn_out_bias: np.ndarray
    attn_norm: tuple[np.ndarray, np.ndarray]
    ffn_in: np.ndarray  # (intermediate, hidden)
    ffn_in_bias: np.ndarray
    ffn_out: np.ndarray  # (hidden, intermediate)
    ffn_out_bias: np.ndarray
    ffn_norm: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class _Buffers:
    """Everything one forward pass of a (batch, width) shape writes, allocated once for that shape."""

    x: np.ndarray  # (tokens, hidden): the hidden states, updated layer by layer
    qkv: np.ndarray  # (tokens, 3 * hidden)
    scores: np.ndarray  # (batch, heads, width, width)
    context: np.ndarray  # (batch, width, heads, head size)
    inner: np.ndarray  # (tokens, intermediate)
    rows: np.ndarray  # (tokens, 1): per-row statistics
    maxima: np.ndarray  # (batch, heads, width, 1)


@dataclass(eq=False)
class NumpyBert:
    """BertModel's forward pass (embeddings, then post-norm transformer layers) over float32 numpy arrays."""

    word: np.ndarray
    position: np.ndarray
    token_type: np.ndarray
    embed_norm: tuple[np.ndarray, np.ndarray]
    layers: list[LayerWeights]
    heads: int
    eps: float
    act: Callable[[np.ndarray], None]
    pooler: tuple[np.ndarray, np.ndarray] | None = None
    gemm: Gemm = numpy_gemm
    products: str = "numpy"  # what computes the matrix products, for health
    _buffers: dict[tuple[int, int], _Buffers] = field(default_factory=dict)

    def twin(self) -> NumpyBert:
        """The same model over the same weights, with its own buffers and scratch: one per thread."""
        return replace(self, act=Gelu() if isinstance(self.act, Gelu) else self.act, _buffers={})

    def _buffers_for(self, batch: int, width: int) -> _Buffers:
        key = (batch, width)
        if key in self._buffers:
            return self._buffers[key]
        fresh = self._allocate(batch, width)
        size = _nbytes(fresh)
        if size <= _KEPT_BYTES:
            # Oldest shapes first out, until the new one fits the count and the byte budget.
            while self._buffers and (
                len(self._buffers) >= _KEPT_SHAPES or sum(map(_nbytes, self._buffers.values())) + size > _KEPT_BYTES
            ):
                self._buffers.pop(next(iter(self._buffers)))
            self._buffers[key] = fresh
        return fresh

    def _allocate(self, batch: int, width: int) -> _Buffers:
        tokens, hidden = batch * width, self.word.shape[1]
        inter = self.layers[0].ffn_in.shape[0]
        return _Buffers(
            x=np.empty((tokens, hidden), np.float32),
            qkv=np.empty((tokens, 3 * hidden), np.float32),
            scores=np.empty((batch, self.heads, width, width), np.float32),
            context=np.empty((batch, width, self.heads, hidden // self.heads), np.float32),
            inner=np.empty((tokens, inter), np.float32),
            rows=np.empty((tokens, 1), np.float32),
            maxima=np.empty((batch, self.heads, width, 1), np.float32),
        )

    def __call__(self, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Hidden states (batch, width, hidden) for int token ids, segment ids and a 0/1 mask of real tokens.

        The array returned is a buffer reused by the next call of the same shape."""
        batch, width = ids.shape
        buf = self._buffers_for(batch, width)
        x = buf.x.reshape(batch, width, -1)
        np.take(self.word, ids, axis=0, out=x)
        x += self.position[:width]
        x += np.take(self.token_type, type_ids, axis=0)
        layer_norm(buf.x, *self.embed_norm, self.eps, buf.rows)
        # Additive mask over keys: padded positions get a large negative score before the softmax.
        key_bias = ((mask.astype(np.float32) - 1.0) * 1e4)[:, None, None, :] if not mask.all() else None
        for layer in self.layers:
            self._attention(layer, buf, key_bias)
            self._feed_forward(layer, buf)
        return x

    def _attention(self, w: LayerWeights, buf: _Buffers, key_bias: np.ndarray | None) -> None:
        batch, heads, width, _ = buf.scores.shape
        # Biases (and residuals) are in the output before the product adds to it: one pass fewer each.
        np.copyto(buf.qkv, w.qkv_bias)
        self.gemm(buf.x, w.qkv, buf.qkv, 1.0)
        queries = buf.qkv[:, : buf.x.shape[1]]
        np.multiply(queries, np.float32(buf.context.shape[-1] ** -0.5), out=queries)
        q, k, v = buf.qkv.reshape(batch, width, 3, heads, -1).transpose(2, 0, 3, 1, 4)
        np.matmul(q, k.swapaxes(-1, -2), out=buf.scores)
        if key_bias is not None:
            np.add(buf.scores, key_bias, out=buf.scores)
        softmax_rows(buf.scores.reshape(-1, width), buf.maxima.reshape(-1))
        np.matmul(buf.scores, v, out=buf.context.transpose(0, 2, 1, 3))
        np.add(buf.x, w.attn_out_bias, out=buf.x)
        self.gemm(buf.context.reshape(buf.x.shape), w.attn_out, buf.x, 1.0)
        layer_norm(buf.x, *w.attn_norm, self.eps, buf.rows)

    def _feed_forward(self, w: LayerWeights, buf: _Buffers) -> None:
        np.copyto(buf.inner, w.ffn_in_bias)
        self.gemm(buf.x, w.ffn_in, buf.inner, 1.0)
        self.act(buf.inner)
        np.add(buf.x, w.ffn_out_bias, out=buf.x)
        self.gemm(buf.inner, w.ffn_out, buf.x, 1.0)
        layer_norm(buf.x, *w.ffn_norm, self.eps, buf.rows)


def _nbytes(buffers: _Buffers) -> int:
    return sum(getattr(buffers, name).nbytes for name in _Buffers.__slots__)


def _view(array: object) -> np.ndarray:
    """A float32 numpy view of a parameter (MLX arrays share their memory; nothing is copied)."""
    view = np.asarray(array)
    if view.dtype != np.float32:
        raise ModelLoadError(f"the numpy forward pass needs float32 weights, not {view.dtype}")
    return view


def from_weights(
    weights: Mapping[str, object],
    *,
    layers: int,
    heads: int,
    eps: float,
    hidden_act: str,
    pooler: bool,
) -> NumpyBert:
    """A NumpyBert over BertModel's parameters (adapters/mlx_bert.py names; linear weights are (out, in))."""

    def norm(name: str) -> tuple[np.ndarray, np.ndarray]:
        return _view(weights[f"{name}.weight"]), _view(weights[f"{name}.bias"])

    def linear(name: str) -> tuple[np.ndarray, np.ndarray]:
        return _view(weights[f"{name}.weight"]), _view(weights[f"{name}.bias"])

    stack = [
        LayerWeights(
            *linear(f"layers.{i}.qkv"),
            *linear(f"layers.{i}.attn_out"),
            norm(f"layers.{i}.attn_norm"),
            *linear(f"layers.{i}.ffn_in"),
            *linear(f"layers.{i}.ffn_out"),
            norm(f"layers.{i}.ffn_norm"),
        )
        for i in range(layers)
    ]
    return NumpyBert(
        word=_view(weights["word.weight"]),
        position=_view(weights["position.weight"]),
        token_type=_view(weights["token_type.weight"]),
        embed_norm=norm("embed_norm"),
        layers=stack,
        heads=heads,
        eps=eps,
        act=activation(hidden_act),
        pooler=linear("pooler") if pooler else None,
    )


def mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of each row's real tokens' hidden states, L2-normalised (sentence-transformers' pooling)."""
    weights = mask.astype(np.float32)
    pooled = np.einsum("bnh,bn->bh", hidden, weights)
    pooled /= np.maximum(weights.sum(axis=1, keepdims=True), np.float32(1e-9))
    pooled /= np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), np.float32(1e-12))
    return np.asarray(pooled, dtype=np.float32)


def pooled_first_token(model: NumpyBert, hidden: np.ndarray) -> np.ndarray:
    """BERT's pooler: tanh of a linear layer over each row's first ([CLS]) hidden state."""
    if model.pooler is None:
        raise ValueError("this encoder was loaded without its pooler")
    weight, bias = model.pooler
    return np.asarray(np.tanh(hidden[:, 0] @ weight.T + bias), dtype=np.float32)
