"""Tiny random chat LMs for tests: an mlx-lm llama directory, and the same kind of model as a GGUF file.

The weights are random, so the text is noise: assert shapes (counts, finish
reasons, determinism), never content. The end-of-sequence token's embedding row
is zero, which gives it a logit of exactly 0 while some other token always
scores above 0, so greedy decoding (temperature 0) never ends early: it
produces exactly max_tokens tokens.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from adapters.mlx_gguf import run_in_mlx_thread
from tests.support.gguf_writer import GGML_F32, GGML_Q4_1, MetadataValue, write_gguf

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN_ID = 2  # <|im_end|>, as in ChatML models
CONTEXT_LENGTH = 1024
_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "system user assistant: You are a helpful assistant. Count 1 2 3 4 5 6 7 8 9 10.",
    "Local models answer questions, write code and summarise documents.",
)


def build_tiny_lm(path: Path, *, seed: int = 0) -> Path:
    """Write a tiny random llama chat model loadable by `mlx_lm.load(str(path))`; returns `path`.

    Callable from any thread: the MLX work runs on a short-lived thread that releases its streams.
    """
    run_in_mlx_thread(lambda: _write_tiny_lm(path, seed))
    return path


def _write_tiny_lm(path: Path, seed: int) -> None:
    import mlx.core as mx

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokenizer.save(str(path / "tokenizer.json"))
    args, weights = _random_llama(tokenizer.get_vocab_size(), seed)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = {**dataclasses.asdict(args), "eos_token_id": EOS_TOKEN_ID}
    _write_json(path / "config.json", config)
    _write_json(
        path / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": SPECIAL_TOKENS[EOS_TOKEN_ID],
            "pad_token": SPECIAL_TOKENS[0],
            "model_max_length": CONTEXT_LENGTH,
            "chat_template": CHATML_TEMPLATE,
        },
    )


def train_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE (digits split one by one, like SmolLM2's) trained in-process on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS) * 8, trainer)
    return tokenizer


def _random_llama(vocab_size: int, seed: int) -> tuple[Any, dict[str, Any]]:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=vocab_size,
        max_position_embeddings=CONTEXT_LENGTH,
        tie_word_embeddings=True,
    )
    mx.random.seed(seed)
    weights = dict(tree_flatten(llama.Model(args).parameters()))
    # At default init the residual stream is mostly the current token's embedding and replies barely depend on
    # the prompt; larger projections make attention (and so the KV cache) matter.
    weights = {
        name: w * 3.0 if w.ndim == 2 and name != "model.embed_tokens.weight" else w for name, w in weights.items()
    }
    embed = weights["model.embed_tokens.weight"]
    weights["model.embed_tokens.weight"] = embed * (mx.arange(vocab_size) != EOS_TOKEN_ID)[:, None]
    return args, weights


def build_tiny_gguf(path: Path, *, seed: int = 0, quantize: bool = True) -> Path:
    """Write the tiny model as a llama.cpp-style GGUF file at `path`; returns `path`.

    With `quantize` the matrices are Q4_1 (as in the SmolLM2 pack) and the norms float32; without, all float32.
    """
    run_in_mlx_thread(lambda: _write_tiny_gguf(path, seed, quantize))
    return path


def _write_tiny_gguf(path: Path, seed: int, quantize: bool) -> None:
    import numpy as np

    tokenizer = train_tokenizer()
    args, weights = _random_llama(tokenizer.get_vocab_size(), seed)
    tensors = {}
    for name, tensor in weights.items():
        array = np.array(tensor, dtype=np.float32)
        kind = GGML_Q4_1 if quantize and array.ndim == 2 else GGML_F32
        tensors[_gguf_name(name)] = (array, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(path, {**_llama_metadata(args), **_tokenizer_metadata(tokenizer)}, tensors)


_GGUF_BLOCK_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    _, _, index, rest = name.split(".", 3)
    module, _, suffix = rest.rpartition(".")
    return f"blk.{index}.{_GGUF_BLOCK_NAMES[module]}.{suffix}"


def _llama_metadata(args: Any) -> dict[str, MetadataValue]:
    return {
        "general.architecture": "llama",
        "llama.embedding_length": args.hidden_size,
        "llama.block_count": args.num_hidden_layers,
        "llama.feed_forward_length": args.intermediate_size,
        "llama.attention.head_count": args.num_attention_heads,
        "llama.attention.head_count_kv": args.num_key_value_heads,
        "llama.attention.layer_norm_rms_epsilon": float(args.rms_norm_eps),
        "llama.rope.freq_base": float(args.rope_theta),
        "llama.context_length": CONTEXT_LENGTH,
        "llama.vocab_size": args.vocab_size,
    }


def _tokenizer_metadata(tokenizer: Any) -> dict[str, MetadataValue]:
    model = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    types = [3 if token in SPECIAL_TOKENS else 1 for token in tokens]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": [" ".join(m) if isinstance(m, list) else m for m in model["merges"]],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": EOS_TOKEN_ID,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHATML_TEMPLATE,
    }


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
