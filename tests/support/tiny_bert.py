"""Tiny random BERT models written to disk in the Hugging Face layout, plus a float64 numpy reference.

The reference follows the BERT paper's layer order independently of adapters/mlx_bert.py, so a test
can check the MLX encoder's architecture without any downloaded weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    *("the", "a", "cat", "dog", "sits", "on", "mat", "rug", "feline", "is", "resting", "sun", "hot", "star"),
    *("bright", "weather", "rain", "cold", "today", "what", "how", "where", "who", "paris", "france"),
    *("capital", "city", "of", "in", "and", "to", "revenue", "grew", "stock", "market"),
]


def _vocab() -> dict[str, int]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = SPECIALS + WORDS + letters + [f"##{c}" for c in letters] + list(".,?!")
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def write_tokenizer(path: Path) -> int:
    vocab = _vocab()
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    tok.save(str(path / "tokenizer.json"))
    return len(vocab)


def _params(cfg: dict[str, int], rng: np.random.Generator, *, prefix: str, pooler: bool) -> dict[str, np.ndarray]:
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.2).astype(np.float32)

    def vec(n: int, base: float = 0.0) -> np.ndarray:
        return (base + rng.standard_normal(n) * 0.05).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": mat(cfg["vocab_size"], h),
        "embeddings.position_embeddings.weight": mat(cfg["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": mat(2, h),
        "embeddings.LayerNorm.weight": vec(h, 1.0),
        "embeddings.LayerNorm.bias": vec(h),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[f"{p}attention.self.{name}.weight"], w[f"{p}attention.self.{name}.bias"] = mat(h, h), vec(h)
        w[f"{p}attention.output.dense.weight"], w[f"{p}attention.output.dense.bias"] = mat(h, h), vec(h)
        w[f"{p}attention.output.LayerNorm.weight"], w[f"{p}attention.output.LayerNorm.bias"] = vec(h, 1.0), vec(h)
        w[f"{p}intermediate.dense.weight"], w[f"{p}intermediate.dense.bias"] = mat(inter, h), vec(inter)
        w[f"{p}output.dense.weight"], w[f"{p}output.dense.bias"] = mat(h, inter), vec(h)
        w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"] = vec(h, 1.0), vec(h)
    if pooler:
        w["pooler.dense.weight"], w["pooler.dense.bias"] = mat(h, h), vec(h)
    return {prefix + k: v for k, v in w.items()}


def write_tiny_bert(path: Path, *, seed: int = 0, cross_encoder: bool = False, max_seq_length: int | None = 24) -> Path:
    """A 2-layer, 32-wide BERT (or BertForSequenceClassification with a random head) at `path`."""
    import mlx.core as mx

    path.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(path)
    cfg = {
        "model_type": "bert",
        "architectures": ["BertForSequenceClassification" if cross_encoder else "BertModel"],
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 40,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    }
    rng = np.random.default_rng(seed)
    weights = _params(cfg, rng, prefix="bert." if cross_encoder else "", pooler=cross_encoder)
    if cross_encoder:
        cfg["id2label"] = {"0": "LABEL_0"}  # type: ignore[assignment]
        weights["classifier.weight"] = (rng.standard_normal((1, 32)) * 0.5).astype(np.float32)
        weights["classifier.bias"] = np.array([0.1], dtype=np.float32)
    (path / "config.json").write_text(json.dumps(cfg))
    if max_seq_length is not None:
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    mx.save_safetensors(str(path / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()})
    return path


def mark_installed(path: Path, name: str | None = None) -> Path:
    """Give a model directory the record `models pull` writes (every file's size and sha256), as if pulled."""
    from adapters.mlx_pack import MARKER, describe_files

    record = {"name": name or path.name, "package": "tiny", "version": "0", "format": "hf", **describe_files(path)}
    marker = path / MARKER
    marker.write_text(json.dumps(record))
    marker.chmod(0o600)
    return path


# --- float64 reference ----------------------------------------------------------


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def reference_hidden(path: Path, ids: list[int], type_ids: list[int]) -> np.ndarray:
    """Last hidden states of one unpadded sequence, computed in float64."""
    import mlx.core as mx

    cfg = json.loads((path / "config.json").read_text())
    raw = mx.load(str(path / "model.safetensors"))
    w = {k.removeprefix("bert."): np.array(v).astype(np.float64) for k, v in raw.items()}
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][: len(ids)]
        + w["embeddings.token_type_embeddings.weight"][type_ids]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    n, h = x.shape
    d = h // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(v: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (
            lin(x, f"attention.self.{t}").reshape(n, heads, d).transpose(1, 0, 2) for t in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, h)
        x = _layer_norm(x + lin(ctx, "attention.output.dense"), *_ln(w, p + "attention.output.LayerNorm"), eps)
        ffn = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
        x = _layer_norm(x + ffn, *_ln(w, p + "output.LayerNorm"), eps)
    return x


def _ln(w: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    return w[name + ".weight"], w[name + ".bias"]


def reference_embedding(path: Path, ids: list[int]) -> np.ndarray:
    pooled = reference_hidden(path, ids, [0] * len(ids)).mean(0)
    return pooled / np.linalg.norm(pooled)


def reference_logit(path: Path, ids: list[int], type_ids: list[int]) -> float:
    import mlx.core as mx

    raw = {k: np.array(v).astype(np.float64) for k, v in mx.load(str(path / "model.safetensors")).items()}
    cls = reference_hidden(path, ids, type_ids)[0]
    pooled = np.tanh(cls @ raw["bert.pooler.dense.weight"].T + raw["bert.pooler.dense.bias"])
    return float(pooled @ raw["classifier.weight"][0] + raw["classifier.bias"][0])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
