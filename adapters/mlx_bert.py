"""BERT in MLX: sentence embeddings (mean pooling + L2 norm) and cross-encoder relevance scores.

Loads a local Hugging Face directory (config.json, model.safetensors, tokenizer.json). Everything
here runs on the MLX owner thread; nothing touches the event loop.

    SentenceEncoder   BertModel layout (sentence-transformers, e.g. all-MiniLM-L6-v2)
    CrossEncoder      BertForSequenceClassification layout, num_labels=1 (e.g. ms-marco cross-encoders):
                      score = sigmoid(classifier(tanh(pooler(h[CLS]))))
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tokenizers import Tokenizer

from adapters.errors import ModelLoadError, safe_detail
from adapters.mlx_activations import Activation, activation, erf_rational, gelu_exact, gelu_fast
from adapters.mlx_attention import softmax

__all__ = ["CrossEncoder", "SentenceEncoder", "erf_rational", "gelu_exact", "gelu_fast"]

ChunkFn = Callable[[int, int], None]  # (inputs done, inputs total)
NUMPY_SOFTMAX_FROM = 64  # padded tokens per input
Inputs = Sequence[str] | Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    num_labels: int = 1

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BertConfig:
        if raw.get("model_type", "bert") != "bert":
            raise ModelLoadError(f"config.json model_type is {raw.get('model_type')!r}, expected 'bert'")
        try:
            labels = raw.get("id2label")
            return cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=int(raw["hidden_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                max_position_embeddings=int(raw["max_position_embeddings"]),
                type_vocab_size=int(raw.get("type_vocab_size", 2)),
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
                hidden_act=str(raw.get("hidden_act", "gelu")),
                num_labels=int(raw.get("num_labels", len(labels) if isinstance(labels, dict) else 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"config.json is not a BERT config: missing or bad field {exc}") from exc


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

    def __call__(self, x: mx.array, mask: mx.array, act: Activation, numpy_softmax: bool) -> mx.array:
        b, n, h = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, h // self.heads).transpose(2, 0, 3, 1, 4)
        scale = (h // self.heads) ** -0.5
        # On a CPU MLX's exp makes the n^2 softmax the slow part of long inputs' attention; for short ones the
        # hand-over to numpy costs more than it saves (adapters/mlx_attention.py).
        if numpy_softmax and n >= NUMPY_SOFTMAX_FROM:
            ctx = softmax((q * scale) @ k.swapaxes(-1, -2) + mask) @ v
        else:
            ctx = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        x = self.attn_norm(x + self.attn_out(ctx.transpose(0, 2, 1, 3).reshape(b, n, h)))
        return self.ffn_norm(x + self.ffn_out(act(self.ffn_in(x))))


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
        self._act = act
        self.numpy_softmax = False  # set at load: float32 on a CPU

    def __call__(self, ids: mx.array, type_ids: mx.array, mask: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1])
        x = self.embed_norm(self.word(ids) + self.position(positions) + self.token_type(type_ids))
        # Additive mask over keys: padded positions get a large negative score before softmax.
        bias = ((mask[:, None, None, :].astype(x.dtype) - 1.0) * 1e4).astype(x.dtype)
        for layer in self.layers:
            x = layer(x, bias, self._act, self.numpy_softmax)
        return x


_HF_NAMES = [
    (r"^embeddings\.word_embeddings\.", "word."),
    (r"^embeddings\.position_embeddings\.", "position."),
    (r"^embeddings\.token_type_embeddings\.", "token_type."),
    (r"^embeddings\.LayerNorm\.", "embed_norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_in."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_out."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
    (r"^pooler\.dense\.", "pooler."),
]
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")


def _rename(weights: dict[str, mx.array], *, pooler: bool) -> dict[str, mx.array]:
    """Map Hugging Face BERT tensor names onto BertModel's, fusing q/k/v."""
    out: dict[str, mx.array] = {}
    qkv: dict[tuple[str, str], dict[str, mx.array]] = {}
    for raw, value in weights.items():
        name = raw.removeprefix("bert.")
        if name.endswith("position_ids") or (name.startswith("pooler.") and not pooler):
            continue
        if m := _QKV.match(name):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _HF_NAMES:
            if re.match(pattern, name):
                out[re.sub(pattern, repl, name)] = value
                break
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ModelLoadError(f"model.safetensors lacks part of layer {layer}'s attention {kind}")
        out[f"layers.{layer}.qkv.{kind}"] = mx.concatenate([parts["query"], parts["key"], parts["value"]])
    return out


@dataclass(frozen=True, slots=True)
class Batch:
    ids: np.ndarray
    type_ids: np.ndarray
    mask: np.ndarray
    tokens: int
    truncated: int


def _pad(encodings: Sequence[Any], pad_id: int) -> Batch:
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int32)
    type_ids = np.zeros((len(encodings), width), dtype=np.int32)
    mask = np.zeros((len(encodings), width), dtype=np.int32)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n], type_ids[row, :n], mask[row, :n] = enc.ids, enc.type_ids, 1
    truncated = sum(1 for e in encodings if e.overflowing)
    return Batch(ids, type_ids, mask, int(mask.sum()), truncated)


_PAD_SLACK = 64  # padding a chunk may carry for free: below this, one more pass costs more than it saves


def _chunks(lengths: Sequence[int], token_budget: int, batch_limit: int) -> list[list[int]]:
    """Group input indices, shortest first, so each chunk stays under the token budget and mostly unpadded.

    A chunk also closes when the next (longer) input would make more than half of it padding: one
    256-token text padded into a batch of 8-token texts would otherwise multiply the work of all of them.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        # Sorted ascending, so the newest member is the chunk's longest and sets its padded width.
        padded = (len(current) + 1) * lengths[i]
        full = len(current) >= batch_limit or padded > token_budget
        if current and (full or padded > 2 * (real + lengths[i]) + _PAD_SLACK):
            chunks.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        chunks.append(current)
    return chunks


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"model directory {path.parent} has no {path.name}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def _max_length(path: Path, cfg: BertConfig) -> int:
    """sentence-transformers' max_seq_length wins (256 for MiniLM); else the position table's size."""
    st = path / "sentence_bert_config.json"
    limit = cfg.max_position_embeddings
    if st.is_file():
        limit = min(limit, int(_read_json(st).get("max_seq_length", limit)))
    return limit


def _resolve_dtype(dtype: str) -> mx.Dtype:
    if dtype == "auto":
        return mx.float16 if mx.default_device() == mx.gpu else mx.float32
    return {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[dtype]


class _BertRunner:
    """Shared loading, tokenisation and chunked forward passes."""

    def __init__(self, path: Path, model: BertModel, tokenizer: Tokenizer, cfg: BertConfig, max_length: int) -> None:
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
        self.config = cfg
        self.max_length = max_length
        self.forward_passes = 0
        self._pad_id = tokenizer.token_to_id("[PAD]") or 0

    @property
    def layout(self) -> str:
        """The weights' dtype and device, for health."""
        dtype = str(self.model.word.weight.dtype).removeprefix("mlx.core.")
        device = "cpu" if mx.default_device() == mx.cpu else "gpu"
        softmax = f", numpy softmax from {NUMPY_SOFTMAX_FROM} tokens" if self.model.numpy_softmax else ""
        return f"{dtype}{softmax} ({device})"

    @staticmethod
    def _load_parts(
        path: Path, *, fast_gelu: bool, dtype: str, pooler: bool
    ) -> tuple[BertModel, Tokenizer, BertConfig, dict[str, mx.array]]:
        if not path.is_dir():
            raise ModelLoadError(f"model directory {path} does not exist")
        cfg = BertConfig.from_dict(_read_json(path / "config.json"))
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
        renamed = _rename(raw, pooler=pooler)
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

    def _run(
        self,
        inputs: Inputs,
        head: Callable[[mx.array, mx.array], mx.array],
        *,
        token_budget: int,
        batch_limit: int,
        on_chunk: ChunkFn | None,
    ) -> tuple[np.ndarray, int, int]:
        self.tokenizer.enable_truncation(self.max_length)
        encodings = self.tokenizer.encode_batch(list(inputs))
        plan = _chunks([len(e.ids) for e in encodings], max(token_budget, self.max_length), max(batch_limit, 1))
        rows: list[np.ndarray] = [np.empty(0)] * len(encodings)
        tokens = truncated = done = 0
        for indices in plan:
            batch = _pad([encodings[i] for i in indices], self._pad_id)
            mask = mx.array(batch.mask)
            hidden = self.model(mx.array(batch.ids), mx.array(batch.type_ids), mask)
            out = np.array(head(hidden, mask).astype(mx.float32))
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
    def load(cls, path: Path, *, fast_gelu: bool = True, dtype: str = "auto") -> SentenceEncoder:
        model, tokenizer, cfg, _ = cls._load_parts(path, fast_gelu=fast_gelu, dtype=dtype, pooler=False)
        return cls(path, model, tokenizer, cfg, _max_length(path, cfg))

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
            texts, _mean_pool_normalise, token_budget=token_budget, batch_limit=batch_limit, on_chunk=on_chunk
        )
        return Encoded(vectors.astype(np.float32), tokens, truncated)


class CrossEncoder(_BertRunner):
    """BertForSequenceClassification with one label: a (query, document) relevance score."""

    def __init__(self, *args: Any, classifier: nn.Linear, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.classifier = classifier

    @classmethod
    def load(cls, path: Path, *, fast_gelu: bool = True, dtype: str = "auto") -> CrossEncoder:
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
        return cls(path, model, tokenizer, cfg, _max_length(path, cfg), classifier=classifier)

    def _logits(self, hidden: mx.array, mask: mx.array) -> mx.array:
        return self.classifier(mx.tanh(self.model.pooler(hidden[:, 0]))).astype(mx.float32)[:, 0]

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Raw classifier outputs, before the sigmoid (for checks against a reference)."""
        return self._run(pairs, self._logits, token_budget=1 << 30, batch_limit=1 << 30, on_chunk=None)[0]

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
            pairs, self._logits, token_budget=token_budget, batch_limit=batch_limit, on_chunk=on_chunk
        )
        return Scored((1.0 / (1.0 + np.exp(-logits))).astype(np.float32), tokens, truncated)
