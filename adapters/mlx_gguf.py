"""Turn a llama-family GGUF file into an mlx-lm model directory.

MLX reads GGUF natively: Q4_0/Q4_1/Q8_0 tensors come back as MLX affine
quantized triples (packed uint32 weight, scales, biases; group size 32), so
the 4-bit weights are kept as they are and only renamed. llama.cpp stores
q/k rows permuted for interleaved rotary embeddings, hence
`rope_traditional: true`. The tokenizer is rebuilt from the GGUF vocabulary
and merges as a byte-level BPE `tokenizer.json` that transformers loads
without a hub.

The output directory appears atomically (built in a sibling temp dir, then
renamed) and a finished conversion of the same source is not redone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from adapters.errors import ModelLoadError, safe_detail

# Bump when the output layout changes so older conversions are redone.
CONVERTER_VERSION = 1
MARKER_FILE = "conversion.json"
GGUF_GROUP_SIZE = 32  # every block format MLX keeps quantized (Q4_0, Q4_1, Q8_0) has 32-element blocks

_TOP_LEVEL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# llama.cpp pre-tokenizer name -> whether digits are split one by one before the GPT-2 regex.
_PRE_TOKENIZERS = {"smollm": True, "starcoder": True, "refact": True, "gpt-2": False}
_SPECIAL_TOKEN_KEYS = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "unk": "unknown_token_id",
    "pad": "padding_token_id",
}
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4


class GGUFConversionError(ModelLoadError):
    """The GGUF file cannot be read or describes a model this converter does not handle."""

    retryable = False


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write an mlx-lm directory for `gguf_path` at `out_dir`; a no-op when it is already there.

    Safe to call from any thread: the MLX work runs on a short-lived thread of its own.
    """
    if not gguf_path.is_file():
        raise GGUFConversionError(f"GGUF file {gguf_path} does not exist")
    source = _source_record(gguf_path)
    if not _is_converted(out_dir, source):
        run_in_mlx_thread(lambda: _convert(gguf_path, out_dir, source))


def run_in_mlx_thread(work: Callable[[], None]) -> None:
    """Run MLX work on a fresh thread that releases its MLX streams before it ends.

    MLX streams are per thread; a thread that used them and exits without `mx.clear_streams()` can make
    the process abort at exit, and clearing them on a caller's thread would break its later MLX work.
    """
    import mlx.core as mx

    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            failure.append(exc)
        finally:
            mx.clear_streams()

    thread = threading.Thread(target=run, name="gguf-convert")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _convert(gguf_path: Path, out_dir: Path, source: dict[str, Any]) -> None:
    weights, metadata = _read_gguf(gguf_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model dir is ordinary shared data
    try:
        _write_model(staging, weights, metadata)
        (staging / MARKER_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        _swap_into_place(staging, out_dir, source)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _source_record(gguf_path: Path) -> dict[str, Any]:
    return {"converter_version": CONVERTER_VERSION, "source": gguf_path.name, "source_size": gguf_path.stat().st_size}


def _is_converted(out_dir: Path, source: dict[str, Any]) -> bool:
    try:
        recorded = json.loads((out_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(recorded == source)


def _swap_into_place(staging: Path, out_dir: Path, source: dict[str, Any]) -> None:
    """Rename the finished staging dir onto `out_dir`, moving any stale copy aside first."""
    stale: Path | None = None
    if out_dir.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale.", dir=out_dir.parent))
        os.replace(out_dir, stale / "old")
    try:
        os.replace(staging, out_dir)
    except OSError:
        # A concurrent conversion won the race; theirs is as good as ours.
        if not _is_converted(out_dir, source):
            raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def _read_gguf(gguf_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import mlx.core as mx

    try:
        loaded = mx.load(str(gguf_path), return_metadata=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise GGUFConversionError(f"cannot read GGUF file {gguf_path.name}: {safe_detail(str(exc))}") from exc
    # With return_metadata=True mx.load returns (tensors, metadata); its stub only knows the union.
    weights, metadata = cast(tuple[dict[str, Any], dict[str, Any]], loaded)
    architecture = metadata.get("general.architecture")
    if architecture != "llama":
        raise GGUFConversionError(f"GGUF architecture {architecture!r} is not supported; only 'llama' is")
    return dict(weights), dict(metadata)


def _write_model(directory: Path, weights: dict[str, Any], metadata: dict[str, Any]) -> None:
    import mlx.core as mx

    renamed = rename_weights(weights)
    mx.save_safetensors(str(directory / "model.safetensors"), renamed, metadata={"format": "mlx"})
    config = build_config(metadata, weights)
    _write_json(directory / "config.json", config)
    tokenizer = build_tokenizer(metadata)
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config, special_tokens = build_tokenizer_config(metadata, config["max_position_embeddings"])
    _write_json(directory / "tokenizer_config.json", tokenizer_config)
    _write_json(directory / "special_tokens_map.json", special_tokens)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def rename_weights(weights: dict[str, Any]) -> dict[str, Any]:
    """Map llama.cpp tensor names (`blk.3.attn_q.scales`) to mlx-lm names (`model.layers.3.self_attn.q_proj.scales`)."""
    renamed: dict[str, Any] = {}
    for name, tensor in weights.items():
        base, _, suffix = name.rpartition(".")
        if base.startswith("blk."):
            _, index, part = base.split(".", 2)
            target = _BLOCK_NAMES.get(part)
            new_base = None if target is None else f"model.layers.{index}.{target}"
        else:
            new_base = _TOP_LEVEL_NAMES.get(base)
        if new_base is None:
            raise GGUFConversionError(f"GGUF tensor {name!r} has no llama counterpart; this variant is not supported")
        renamed[f"{new_base}.{suffix}"] = tensor
    return renamed


def _meta_scalar(metadata: dict[str, Any], key: str) -> Any:
    if key not in metadata:
        raise GGUFConversionError(f"GGUF metadata lacks {key!r}")
    value = metadata[key]
    return value.item() if hasattr(value, "item") else value


def build_config(metadata: dict[str, Any], weights: dict[str, Any]) -> dict[str, Any]:
    """An mlx-lm llama config.json from `llama.*` metadata and the tensors actually present."""
    if "llama.rope.scaling.type" in metadata or "rope_freqs.weight" in weights:
        raise GGUFConversionError("GGUF models with rope scaling are not supported")
    hidden = int(_meta_scalar(metadata, "llama.embedding_length"))
    heads = int(_meta_scalar(metadata, "llama.attention.head_count"))
    tokens = metadata.get("tokenizer.ggml.tokens", [])
    config: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(_meta_scalar(metadata, "llama.block_count")),
        "intermediate_size": int(_meta_scalar(metadata, "llama.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(metadata.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(metadata.get("llama.attention.key_length", hidden // heads)),
        "rms_norm_eps": float(_meta_scalar(metadata, "llama.attention.layer_norm_rms_epsilon")),
        "vocab_size": int(metadata.get("llama.vocab_size", len(tokens))),
        "rope_theta": float(metadata.get("llama.rope.freq_base", 10000.0)),
        "rope_traditional": True,
        "max_position_embeddings": int(_meta_scalar(metadata, "llama.context_length")),
        "tie_word_embeddings": "output.weight" not in weights,
        "bos_token_id": int(_meta_scalar(metadata, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_meta_scalar(metadata, "tokenizer.ggml.eos_token_id")),
    }
    quantization = _quantization(weights)
    if quantization is not None:
        config["quantization"] = quantization
    return config


def _quantization(weights: dict[str, Any]) -> dict[str, int] | None:
    """The dominant (group_size, bits); mlx-lm re-derives each layer's own bits from the tensor shapes."""
    bits: Counter[int] = Counter()
    for name, scales in weights.items():
        if name.endswith(".scales"):
            packed = weights[name.removesuffix(".scales") + ".weight"]
            bits[packed.shape[-1] // scales.shape[-1]] += 1
    if not bits:
        return None
    return {"group_size": GGUF_GROUP_SIZE, "bits": bits.most_common(1)[0][0]}


def _token_name(metadata: dict[str, Any], key: str) -> str | None:
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    if key not in metadata:
        return None
    index = int(_meta_scalar(metadata, key))
    return tokens[index] if 0 <= index < len(tokens) else None


def build_tokenizer(metadata: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` equal to the byte-level BPE that llama.cpp describes in the metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    model = metadata.get("tokenizer.ggml.model")
    pre = metadata.get("tokenizer.ggml.pre", "gpt-2")
    if model != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise GGUFConversionError(f"GGUF tokenizer {model!r} with pre-tokenizer {pre!r} is not supported")
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    bpe = models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges, byte_fallback=False)
    tokenizer = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _PRE_TOKENIZERS[pre]:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _post_processor(metadata, processors)
    types = _token_types(metadata, len(tokens))
    tokenizer.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == _TOKEN_TYPE_CONTROL]
    )
    tokenizer.add_tokens(
        [AddedToken(tokens[i], normalized=False) for i, t in enumerate(types) if t == _TOKEN_TYPE_USER_DEFINED]
    )
    return tokenizer


def _token_types(metadata: dict[str, Any], count: int) -> list[int]:
    types = metadata.get("tokenizer.ggml.token_type")
    return [1] * count if types is None else [int(t) for t in types.tolist()]


def _post_processor(metadata: dict[str, Any], processors: Any) -> Any:
    byte_level = processors.ByteLevel(trim_offsets=False)
    add_bos = "tokenizer.ggml.add_bos_token" in metadata and bool(
        _meta_scalar(metadata, "tokenizer.ggml.add_bos_token")
    )
    bos = _token_name(metadata, "tokenizer.ggml.bos_token_id")
    if not add_bos or bos is None:
        return byte_level
    bos_id = int(_meta_scalar(metadata, "tokenizer.ggml.bos_token_id"))
    template = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return processors.Sequence([byte_level, template])


def build_tokenizer_config(metadata: dict[str, Any], context_length: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json for transformers' generic fast tokenizer."""
    special = {
        f"{role}_token": name
        for role, key in _SPECIAL_TOKEN_KEYS.items()
        if (name := _token_name(metadata, f"tokenizer.ggml.{key}")) is not None
    }
    config: dict[str, Any] = {
        # The generic class keeps tokenizer.json as written; named classes may rebuild the pipeline.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        **special,
    }
    template = metadata.get("tokenizer.chat_template")
    if isinstance(template, str):
        config["chat_template"] = template
    return config, special
