"""BERT in MLX: sentence embeddings (mean pooling + L2 norm) and cross-encoder relevance scores.

Loads a local Hugging Face directory (config.json, model.safetensors, tokenizer.json). Everything
here runs on the MLX owner thread; nothing touches the event loop.

    SentenceEncoder   BertModel layout (sentence-transformers, e.g. all-MiniLM-L6-v2)
    CrossEncoder      BertForSequenceClassification layout, num_labels=1 (e.g. ms-marco cross-encoders):
                      score = sigmoid(classifier(tanh(pooler(h[CLS]))))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from tokenizers import Tokenizer

from adapters._gemm import encoder_gemm, encoder_one_thread
from adapters.bert_batches import Batch, chunks, pad
from adapters.bert_config import BertConfig, input_limit, read_json, rename
from adapters.errors import ModelLoadError, safe_detail
from adapters.mlx_activations import (
    Activation,
    BiasedActivation,
    Residual,
    activation,
    biased,
    erf_rational,
    gelu_exact,
    gelu_fast,
    residual,
)
from adapters.mlx_attention import softmax
from adapters.numpy_bert import NumpyBert, from_weights, mean_pool_normalise, pooled_first_token
from adapters.numpy_halves import SPLIT_FROM, Halves

__all__ = ["CrossEncoder", "SentenceEncoder", "erf_rational", "gelu_exact", "gelu_fast"]

ChunkFn = Callable[[int, int], None]  # (inputs done, inputs total)
# Attention scores in one forward batch (inputs x heads x tokens^2) from which numpy computes the softmax.
NUMPY_SOFTMAX_FROM = 8192
Inputs = Sequence[str] | Sequence[tuple[str, str]]
Forward = Literal["auto", "mlx", "numpy"]  # "auto": numpy for float32 on a CPU (adapters/numpy_bert.py)


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.qkv = nn.Linear(h, 3 * h)  # query, key and value fused: one matmul instead of three
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(h, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array, fused: _Fused, numpy_softmax: bool) -> mx.array:
        b, n, h = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, h // self.heads).transpose(2, 0, 3, 1, 4)
        scale = (h // self.heads) ** -0.5
        # On a CPU MLX's exp costs ~20 ns an element, so a batch's softmax over many scores goes to numpy
        # (adapters/mlx_attention.py); for a few scores the hand-over costs more than it saves.
        if numpy_softmax and b * self.heads * n * n >= NUMPY_SOFTMAX_FROM:
            ctx = softmax((q * scale) @ k.swapaxes(-1, -2) + mask) @ v
        else:
            ctx = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        # Biases join the elementwise pass that follows each product (one compiled loop instead of two).
        attended = ctx.transpose(0, 2, 1, 3).reshape(b, n, h) @ self.attn_out.weight.T
        x = self.attn_norm(fused.residual(attended, self.attn_out.bias, x))
        inner = fused.act(x @ self.ffn_in.weight.T, self.ffn_in.bias)
        return self.ffn_norm(fused.residual(inner @ self.ffn_out.weight.T, self.ffn_out.bias, x))


@dataclass(frozen=True, slots=True)
class _Fused:
    act: BiasedActivation
    residual: Residual


class BertModel(nn.Module):
    def __init__(self, cfg: BertConfig, *, act: Activation, pooler: bool = False) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, h)
        self.position = nn.Embedding(cfg.max_position_embeddings, h)
        self.token_type = nn.Embedding(cfg.type_vocab_size, h)
        self.embed_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.layers = [_Layer(cfg) for _ in range(cfg.num_hidden_layers)]
        if pooler:
            self.pooler = nn.Linear(h, h)
        self._fused = _Fused(biased(act), residual())
        self.numpy_softmax = False  # set at load: float32 on a CPU

    def __call__(self, ids: mx.array, type_ids: mx.array, mask: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1])
        x = self.embed_norm(self.word(ids) + self.position(positions) + self.token_type(type_ids))
        # Additive mask over keys: padded positions get a large negative score before softmax.
        bias = ((mask[:, None, None, :].astype(x.dtype) - 1.0) * 1e4).astype(x.dtype)
        for layer in self.layers:
            x = layer(x, bias, self._fused, self.numpy_softmax)
        return x


def _numpy_forward(model: BertModel, cfg: BertConfig, forward: Forward, *, pooler: bool) -> NumpyBert | None:
    """The numpy forward pass over the model's weights where it is chosen: on a CPU in float32 by default."""
    float32 = model.word.weight.dtype == mx.float32
    if forward == "mlx" or (forward == "auto" and not (float32 and mx.default_device() == mx.cpu)):
        return None
    if not float32:
        raise ModelLoadError("the numpy forward pass needs float32 weights (dtype 'float32' or 'auto' on a CPU)")
    numpy_model = from_weights(
        dict(tree_flatten(model.parameters())),
        layers=cfg.num_hidden_layers,
        heads=cfg.num_attention_heads,
        eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        pooler=pooler,
    )
    numpy_model.gemm, numpy_model.products = encoder_gemm()
    return numpy_model


def _resolve_dtype(dtype: str) -> mx.Dtype:
    if dtype == "auto":
        return mx.float16 if mx.default_device() == mx.gpu else mx.float32
    return {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[dtype]


class _BertRunner:
    """Shared loading, tokenisation and chunked forward passes."""

    def __init__(
        self,
        path: Path,
        model: BertModel,
        tokenizer: Tokenizer,
        cfg: BertConfig,
        max_length: int,
        numpy_model: NumpyBert | None = None,
    ) -> None:
        self.path = path
        self.model = model
        self.numpy_model = numpy_model  # the forward pass on a CPU; it reads `model`'s weights in place
        self.tokenizer = tokenizer
        self.config = cfg
        self.max_length = max_length
        self.forward_passes = 0
        self._pad_id = tokenizer.token_to_id("[PAD]") or 0
        one_thread = encoder_one_thread() if numpy_model is not None else None
        # Batches big enough go through on both cores (adapters/numpy_halves.py), where the products can be held.
        self._halves = Halves(numpy_model, one_thread) if numpy_model is not None and one_thread else None

    def close(self) -> None:
        """Stop the thread that runs half of a batch, if one was started; later batches run on the caller alone."""
        if self._halves is not None:
            self._halves.close()

    @property
    def layout(self) -> str:
        """The weights' dtype and device, for health."""
        dtype = str(self.model.word.weight.dtype).removeprefix("mlx.core.")
        device = "cpu" if mx.default_device() == mx.cpu else "gpu"
        if self.numpy_model is not None:
            halves = f", batches of {SPLIT_FROM}+ tokens in halves on two threads" if self._halves else ""
            return f"{dtype}, numpy forward pass, products in {self.numpy_model.products}{halves} ({device})"
        softmax = f", numpy softmax from {NUMPY_SOFTMAX_FROM} scores" if self.model.numpy_softmax else ""
        return f"{dtype}{softmax} ({device})"

    @staticmethod
    def _load_parts(
        path: Path, *, fast_gelu: bool, dtype: str, pooler: bool
    ) -> tuple[BertModel, Tokenizer, BertConfig, dict[str, mx.array]]:
        """The MLX model and its tokenizer; `fast_gelu` picks the rational erf (the numpy pass has its own GELU)."""
        if not path.is_dir():
            raise ModelLoadError(f"model directory {path} does not exist")
        cfg = BertConfig.from_dict(read_json(path / "config.json"))
        weights_file, tokenizer_file = path / "model.safetensors", path / "tokenizer.json"
        for needed in (weights_file, tokenizer_file):
            if not needed.is_file():
                raise ModelLoadError(f"model directory {path} has no {needed.name}")
        try:
            raw = mx.load(str(weights_file))
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # mlx and tokenizers raise bare RuntimeError/Exception on bad files
            raise ModelLoadError(f"cannot read the weights or tokenizer in {path}: {exc}") from exc
        assert isinstance(raw, dict)
        if pooler and "classifier.weight" not in raw:
            raise ModelLoadError(f"model.safetensors in {path} has no classifier head (classifier.weight/bias)")
        model = BertModel(cfg, act=activation(cfg.hidden_act, fast_gelu), pooler=pooler)
        renamed = rename(raw, pooler=pooler)
        try:
            model.load_weights(list(renamed.items()), strict=True)
        except ValueError as exc:
            raise ModelLoadError(
                f"model.safetensors in {path} does not fit its config.json: {safe_detail(str(exc))}"
            ) from exc
        model.set_dtype(_resolve_dtype(dtype))
        model.numpy_softmax = mx.default_device() == mx.cpu and _resolve_dtype(dtype) == mx.float32
        model.eval()
        mx.eval(model.parameters())
        tokenizer.no_padding()
        return model, tokenizer, cfg, raw

    def _head(self, hidden: mx.array, mask: mx.array) -> mx.array:
        raise NotImplementedError

    def _numpy_head(self, model: NumpyBert, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _numpy_rows(self, model: NumpyBert, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._numpy_head(model, model(ids, type_ids, mask), mask)

    def _rows(self, batch: Batch) -> np.ndarray:
        """One padded batch through the encoder and the head: one row of output per input."""
        if self.numpy_model is not None:
            if self._halves is not None and self._halves.splits(batch.ids):
                return self._halves(self._numpy_rows, batch.ids, batch.type_ids, batch.mask)
            return self._numpy_rows(self.numpy_model, batch.ids, batch.type_ids, batch.mask)
        mask = mx.array(batch.mask)
        hidden = self.model(mx.array(batch.ids), mx.array(batch.type_ids), mask)
        return np.array(self._head(hidden, mask).astype(mx.float32))

    def _run(
        self,
        inputs: Inputs,
        *,
        token_budget: int,
        batch_limit: int,
        on_chunk: ChunkFn | None,
    ) -> tuple[np.ndarray, int, int]:
        self.tokenizer.enable_truncation(self.max_length)
        encodings = self.tokenizer.encode_batch(list(inputs))
        plan = chunks([len(e.ids) for e in encodings], max(token_budget, self.max_length), max(batch_limit, 1))
        rows: list[np.ndarray] = [np.empty(0)] * len(encodings)
        tokens = truncated = done = 0
        for indices in plan:
            batch = pad([encodings[i] for i in indices], self._pad_id)
            out = self._rows(batch)
            self.forward_passes += 1
            for row, i in zip(out, indices, strict=True):
                rows[i] = row
            tokens, truncated, done = tokens + batch.tokens, truncated + batch.truncated, done + len(indices)
            if on_chunk is not None:
                on_chunk(done, len(encodings))
        return np.stack(rows), tokens, truncated


@dataclass(frozen=True, slots=True)
class Encoded:
    vectors: np.ndarray  # (n, dimensions) float32, L2-normalised
    tokens: int
    truncated: int


@dataclass(frozen=True, slots=True)
class Scored:
    scores: np.ndarray  # (n,) float32 in [0, 1]
    tokens: int
    truncated: int


def _mean_pool_normalise(hidden: mx.array, mask: mx.array) -> mx.array:
    weights = mask[..., None].astype(mx.float32)
    summed = (hidden.astype(mx.float32) * weights).sum(axis=1)
    pooled = summed / mx.maximum(weights.sum(axis=1), 1e-9)
    norm = mx.sqrt((pooled * pooled).sum(axis=-1, keepdims=True))
    return pooled / mx.maximum(norm, 1e-12)


class SentenceEncoder(_BertRunner):
    """Mean-pooled, L2-normalised sentence embeddings (sentence-transformers semantics)."""

    @classmethod
    def load(
        cls, path: Path, *, fast_gelu: bool = True, dtype: str = "auto", forward: Forward = "auto"
    ) -> SentenceEncoder:
        model, tokenizer, cfg, _ = cls._load_parts(path, fast_gelu=fast_gelu, dtype=dtype, pooler=False)
        numpy_model = _numpy_forward(model, cfg, forward, pooler=False)
        return cls(path, model, tokenizer, cfg, input_limit(path, cfg), numpy_model)

    def _head(self, hidden: mx.array, mask: mx.array) -> mx.array:
        return _mean_pool_normalise(hidden, mask)

    def _numpy_head(self, model: NumpyBert, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return mean_pool_normalise(hidden, mask)

    @property
    def dimensions(self) -> int:
        return self.config.hidden_size

    def encode(
        self,
        texts: Sequence[str],
        *,
        token_budget: int = 16384,
        batch_limit: int = 256,
        on_chunk: ChunkFn | None = None,
    ) -> Encoded:
        if not texts:
            return Encoded(np.zeros((0, self.dimensions), dtype=np.float32), 0, 0)
        vectors, tokens, truncated = self._run(
            texts, token_budget=token_budget, batch_limit=batch_limit, on_chunk=on_chunk
        )
        return Encoded(vectors.astype(np.float32), tokens, truncated)


class CrossEncoder(_BertRunner):
    """BertForSequenceClassification with one label: a (query, document) relevance score."""

    def __init__(self, *args: Any, classifier: nn.Linear, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.classifier = classifier
        # numpy views taken here, on the loading thread: the numpy head may run on the halves' worker.
        self._classifier_np = (np.asarray(classifier.weight), np.asarray(classifier.bias))

    @classmethod
    def load(
        cls, path: Path, *, fast_gelu: bool = True, dtype: str = "auto", forward: Forward = "auto"
    ) -> CrossEncoder:
        model, tokenizer, cfg, raw = cls._load_parts(path, fast_gelu=fast_gelu, dtype=dtype, pooler=True)
        if cfg.num_labels != 1:
            raise ModelLoadError(f"cross-encoder in {path} has num_labels={cfg.num_labels}; only 1 is supported")
        head = {k.removeprefix("classifier."): v for k, v in raw.items() if k.startswith("classifier.")}
        if set(head) != {"weight", "bias"}:
            raise ModelLoadError(f"model.safetensors in {path} has no classifier head (classifier.weight/bias)")
        classifier = nn.Linear(cfg.hidden_size, 1)
        try:
            classifier.load_weights(list(head.items()), strict=True)
        except ValueError as exc:
            raise ModelLoadError(f"classifier head in {path} does not fit its config.json: {exc}") from exc
        classifier.set_dtype(_resolve_dtype(dtype))
        mx.eval(classifier.parameters())
        numpy_model = _numpy_forward(model, cfg, forward, pooler=True)
        return cls(path, model, tokenizer, cfg, input_limit(path, cfg), numpy_model, classifier=classifier)

    def _head(self, hidden: mx.array, mask: mx.array) -> mx.array:
        return self.classifier(mx.tanh(self.model.pooler(hidden[:, 0]))).astype(mx.float32)[:, 0]

    def _numpy_head(self, model: NumpyBert, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        pooled = pooled_first_token(model, hidden)
        weight, bias = self._classifier_np
        return (pooled @ weight.T + bias).astype(np.float32)[:, 0]

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Raw classifier outputs, before the sigmoid (for checks against a reference)."""
        return self._run(pairs, token_budget=1 << 30, batch_limit=1 << 30, on_chunk=None)[0]

    def score(
        self,
        query: str,
        documents: Sequence[str],
        *,
        token_budget: int = 16384,
        batch_limit: int = 256,
        on_chunk: ChunkFn | None = None,
    ) -> Scored:
        if not documents:
            return Scored(np.zeros(0, dtype=np.float32), 0, 0)
        pairs = [(query, doc) for doc in documents]
        logits, tokens, truncated = self._run(
            pairs, token_budget=token_budget, batch_limit=batch_limit, on_chunk=on_chunk
        )
        return Scored((1.0 / (1.0 + np.exp(-logits))).astype(np.float32), tokens, truncated)
