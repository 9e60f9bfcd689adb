"""BERT model directories in the Hugging Face layout: config.json, the input length limit, tensor names.

Shared by the MLX and numpy forward passes (adapters/mlx_bert.py, adapters/numpy_bert.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from adapters.errors import ModelLoadError

# Eigen's rational erf(z) = z * P(z^2) / Q(z^2) on [-4, 4] (beyond it erf is +/-1 in float32), lowest power
# first; max error 6.5e-8 in float64. Both forward passes' GELU use it: it keeps GELU to multiply-adds.
ERF_NUM = (
    -1.60960333262415e-02,
    -2.95459980854025e-03,
    -7.34990630326855e-04,
    -5.69250639462346e-05,
    -2.10102402082508e-06,
    2.77068142495902e-08,
    -2.72614225801306e-10,
)
ERF_DEN = (
    -1.42647390514189e-02,
    -7.37332916720468e-03,
    -1.68282697438203e-03,
    -2.13374055278905e-04,
    -1.45660718464996e-05,
)
SQRT_HALF = 0.7071067811865476


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


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"model directory {path.parent} has no {path.name}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def input_limit(path: Path, cfg: BertConfig) -> int:
    """sentence-transformers' max_seq_length wins (256 for MiniLM); else the position table's size."""
    st = path / "sentence_bert_config.json"
    limit = cfg.max_position_embeddings
    if st.is_file():
        limit = min(limit, int(read_json(st).get("max_seq_length", limit)))
    return limit


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


def rename(weights: dict[str, mx.array], *, pooler: bool) -> dict[str, mx.array]:
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
