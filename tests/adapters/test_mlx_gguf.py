from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from tokenizers import Tokenizer

from adapters.mlx_chat import ChatModel
from adapters.mlx_gguf import GGUFConversionError, build_config, convert_gguf, rename_weights
from adapters.mlx_runtime import Steering
from tests.support.gguf_writer import GGML_F32, GGML_Q4_1, dequantize_q4_1, quantize_q4_1, write_gguf
from tests.support.smollm2 import GGUF_SKIP_REASON, smollm2_gguf
from tests.support.tiny_lm import build_tiny_gguf

DIGITS_TEXT = "Order 66 shipped 2024-05-17 at 13:45, total $1234.50"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_f32_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", quantize=False)


def read_json(path: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return value


def assert_digits_round_trip(tokenizer_json: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    encoding = tokenizer.encode(DIGITS_TEXT)
    assert tokenizer.decode(encoding.ids) == DIGITS_TEXT
    digit_tokens = [t for t in encoding.tokens if any(c.isdigit() for c in t)]
    assert len(digit_tokens) == sum(c.isdigit() for c in DIGITS_TEXT), "digits are not split one by one"


@pytest.mark.parametrize("quantized", [True, False], ids=["q4_1", "f32"])
def test_tiny_gguf_converts_to_a_loadable_mlx_lm_directory(
    tiny_gguf: Path, tiny_f32_gguf: Path, tmp_path: Path, quantized: bool
) -> None:
    out = tmp_path / "models" / "tiny"
    convert_gguf(tiny_gguf if quantized else tiny_f32_gguf, out)
    config = read_json(out / "config.json")
    expected = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    assert {k: config[k] for k in expected} == expected
    assert config["num_key_value_heads"] == 2 and config["rope_traditional"] is True
    assert config["tie_word_embeddings"] is True
    assert config.get("quantization") == ({"group_size": 32, "bits": 4} if quantized else None)
    weights = mx.load(str(out / "model.safetensors"))
    assert isinstance(weights, dict)
    q_proj = weights["model.layers.1.self_attn.q_proj.weight"]
    assert q_proj.dtype == (mx.uint32 if quantized else mx.float32)
    assert ("model.embed_tokens.scales" in weights) is quantized
    assert config["max_position_embeddings"] == 1024 and config["eos_token_id"] == 2
    assert_digits_round_trip(out / "tokenizer.json")
    tokenizer_config = read_json(out / "tokenizer_config.json")
    assert "<|im_start|>" in tokenizer_config["chat_template"] and tokenizer_config["eos_token"] == "<|im_end|>"
    outcome = ChatModel.load(out).generate(
        [{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0.0,
        stop=[],
        steering=Steering(),
    )
    assert outcome.completion_tokens == 4


def test_conversion_is_idempotent_and_leaves_no_staging_dirs(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    convert_gguf(tiny_gguf, out)
    weights_stat = (out / "model.safetensors").stat()
    convert_gguf(tiny_gguf, out)
    assert (out / "model.safetensors").stat().st_mtime_ns == weights_stat.st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_conversion_replaces_a_stale_directory(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "leftover.bin").write_bytes(b"half-written")
    convert_gguf(tiny_gguf, out)
    assert not (out / "leftover.bin").exists()
    assert (out / "model.safetensors").is_file() and (out / "conversion.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_missing_gguf_is_a_conversion_error(tmp_path: Path) -> None:
    with pytest.raises(GGUFConversionError, match="does not exist"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_q4_1_blocks_load_as_mlx_4bit_weights_with_the_same_values(tmp_path: Path) -> None:
    original = np.random.default_rng(0).normal(size=(48, 96)).astype(np.float32)
    path = tmp_path / "one.gguf"
    write_gguf(path, {"general.architecture": "llama"}, {"blk.0.attn_q.weight": (original, GGML_Q4_1)})
    loaded = mx.load(str(path))
    assert isinstance(loaded, dict)
    packed, scales, biases = (loaded[f"blk.0.attn_q.{part}"] for part in ("weight", "scales", "biases"))
    assert packed.dtype == mx.uint32 and packed.shape == (48, 96 * 4 // 32) and scales.shape == (48, 96 // 32)
    restored = np.array(mx.dequantize(packed, scales, biases, group_size=32, bits=4).astype(mx.float32))
    expected = dequantize_q4_1(quantize_q4_1(original), original.shape)
    # MLX dequantizes in float16 (the scales' dtype): two roundings of values below 4 stay under 5e-3,
    # while a wrong nibble order or scale/bias mix-up is off by whole quantization steps (~0.3 here).
    np.testing.assert_allclose(restored, expected, rtol=0, atol=5e-3)


def test_a_non_llama_gguf_is_refused_by_name(tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    write_gguf(other, {"general.architecture": "mamba"}, {"token_embd.weight": (np.zeros((4, 32)), GGML_F32)})
    with pytest.raises(GGUFConversionError, match="'mamba' is not supported"):
        convert_gguf(other, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.gguf"]


def test_unknown_tensor_names_are_refused() -> None:
    with pytest.raises(GGUFConversionError, match=re.escape("blk.0.ssm_conv1d.weight")):
        rename_weights({"blk.0.ssm_conv1d.weight": mx.zeros((2, 2))})


def test_quantized_tensors_set_group_size_and_bits_from_their_shapes() -> None:
    metadata = {
        "llama.embedding_length": mx.array(64),
        "llama.block_count": mx.array(1),
        "llama.feed_forward_length": mx.array(128),
        "llama.attention.head_count": mx.array(4),
        "llama.attention.layer_norm_rms_epsilon": mx.array(1e-5),
        "llama.context_length": mx.array(256),
        "tokenizer.ggml.bos_token_id": mx.array(1),
        "tokenizer.ggml.eos_token_id": mx.array(2),
    }
    for bits in (4, 8):
        packed, scales, biases = mx.quantize(mx.random.normal((128, 64)), group_size=32, bits=bits)
        weights = {"blk.0.ffn_up.weight": packed, "blk.0.ffn_up.scales": scales, "blk.0.ffn_up.biases": biases}
        assert build_config(metadata, weights)["quantization"] == {"group_size": 32, "bits": bits}


@pytest.mark.packs
def test_smollm2_gguf_converts_keeping_4bit_weights(tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip(GGUF_SKIP_REASON)
    out = tmp_path / "smollm2-135m-instruct"
    convert_gguf(gguf, out)
    config = read_json(out / "config.json")
    expected = {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "rope_traditional": True,
        "quantization": {"group_size": 32, "bits": 4},
    }
    assert {k: config[k] for k in expected} == expected
    weights = mx.load(str(out / "model.safetensors"))
    assert isinstance(weights, dict)
    # Q4_1 blocks stay 4-bit; this file keeps the token embedding in Q8_0, which stays 8-bit.
    bits = {"model.embed_tokens": 8, "model.layers.0.self_attn.q_proj": 4, "model.layers.29.mlp.down_proj": 4}
    for name, expected_bits in bits.items():
        packed, scales = weights[f"{name}.weight"], weights[f"{name}.scales"]
        assert packed.dtype == mx.uint32
        assert packed.shape[-1] // scales.shape[-1] == expected_bits
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 49152
    assert len(json.loads(tokenizer.to_str())["model"]["merges"]) == 48900
    assert_digits_round_trip(out / "tokenizer.json")
    assert tokenizer.encode("<|im_end|>").ids == [config["eos_token_id"]]
