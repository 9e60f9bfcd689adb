from __future__ import annotations

import os

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_unflatten
from mlx_lm import load as mlx_lm_load
from mlx_lm.models import llama, qwen2
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

from adapters._blas import find_openblas
from adapters._cblas import NumpyProducts, Products, products_for
from adapters.mlx_layout import _float32
from adapters.numpy_llama import QUANTIZED, NumpyLlama, numpy_decoder
from server.paths import default_models_dir

TOLERANCE = 2e-4  # float32 sums in another order, over a few layers


def _llama(**changes: object) -> llama.Model:
    config: dict[str, object] = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "intermediate_size": 96,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": 300,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        **changes,
    }
    model = llama.Model(llama.ModelArgs(**config))  # type: ignore[arg-type]
    mx.random.seed(7)
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.3) for k, v in _flat(model)]))
    mx.eval(model.parameters())
    return model


def _flat(model: llama.Model) -> list[tuple[str, mx.array]]:
    from mlx.utils import tree_flatten

    return list(tree_flatten(model.parameters()))


@pytest.fixture(scope="module", params=["cblas", "numpy"])
def products(request: pytest.FixtureRequest) -> Products:
    if request.param == "numpy":
        return NumpyProducts()
    library = find_openblas()
    if library is None:
        pytest.skip("no OpenBLAS installed")
    return products_for(library)


def _decoder(model: llama.Model, products: Products) -> NumpyLlama:
    decoder, said = numpy_decoder(model, products)
    assert decoder is not None, said
    return decoder


def _logits(model: object, tokens: list[int], cache: list[object]) -> np.ndarray:
    out = model(mx.array(tokens)[None], cache=cache)  # type: ignore[operator]
    return np.array(out[0, -1], dtype=np.float32)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("tied", [True, False])
def test_the_numpy_decoder_gives_mlx_lms_logits_for_a_chunked_prompt_and_each_generated_token(
    products: Products, traditional: bool, tied: bool
) -> None:
    model = _llama(rope_traditional=traditional, tie_word_embeddings=tied)
    decoder = _decoder(model, products)
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, 300, 37)]
    theirs, ours, whole = make_prompt_cache(model), decoder.make_cache(), decoder.make_cache()
    expected = _logits(model, prompt, theirs)
    decoder.read(mx.array(prompt[:13])[None], ours)  # odd chunks, the last one with logits
    decoder.read(mx.array(prompt[13:30])[None], ours)
    got = _logits(decoder, prompt[30:], ours)
    assert np.abs(got - expected).max() < TOLERANCE
    assert np.abs(_logits(decoder, prompt, whole) - expected).max() < TOLERANCE
    token = int(expected.argmax())
    for _ in range(6):
        expected, got = _logits(model, [token], theirs), _logits(decoder, [token], ours)
        assert np.abs(got - expected).max() < TOLERANCE and got.argmax() == expected.argmax()
        token = int(expected.argmax())
    assert ours[0].offset == theirs[0].offset == 43


def test_a_trimmed_cache_is_reused_for_the_next_turn_like_mlx_lms(products: Products) -> None:
    model = _llama()
    decoder = _decoder(model, products)
    rng = np.random.default_rng(2)
    first, second = [int(t) for t in rng.integers(0, 300, 300)], [int(t) for t in rng.integers(0, 300, 21)]
    theirs, ours = make_prompt_cache(model), decoder.make_cache()
    _logits(model, first, theirs)
    _logits(decoder, first, ours)  # grows past one capacity step
    assert trim_prompt_cache(ours, 100) == trim_prompt_cache(theirs, 100) == 100
    assert ours[0].offset == 200
    expected, got = _logits(model, second, theirs), _logits(decoder, second, ours)
    assert np.abs(got - expected).max() < TOLERANCE
    fresh = decoder.make_cache()
    assert np.abs(_logits(decoder, first[:200] + second, fresh) - got).max() < TOLERANCE


def test_a_prompt_past_the_models_positions_is_refused_before_any_work() -> None:
    decoder = _decoder(_llama(max_position_embeddings=16), NumpyProducts())
    cache = decoder.make_cache()
    with pytest.raises(ValueError, match="17 positions exceed the model's 16"):
        decoder.read(mx.array(list(range(17)))[None], cache)
    assert cache[0].offset == 0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope scaling"),
        ({"attention_bias": True}, "attention or MLP biases"),
        (
            {"layer_types": ["full_attention", "sliding_attention", "full_attention"], "sliding_window": 8},
            "sliding-window layers",
        ),
    ],
)
def test_a_llama_config_the_decoder_does_not_compute_keeps_mlx_lms_model(
    changes: dict[str, object], reason: str
) -> None:
    decoder, said = numpy_decoder(_llama(**changes), NumpyProducts())
    assert decoder is None and said == reason


def test_another_architecture_keeps_mlx_lms_model() -> None:
    args = qwen2.ModelArgs(
        model_type="qwen2",
        hidden_size=32,
        num_hidden_layers=1,
        intermediate_size=48,
        num_attention_heads=4,
        rms_norm_eps=1e-6,
        vocab_size=50,
        num_key_value_heads=2,
    )
    decoder, said = numpy_decoder(qwen2.Model(args), NumpyProducts())
    assert decoder is None and said == "qwen2 architecture"


def test_half_precision_weights_are_taken_in_float32() -> None:
    model = _llama()
    half = model.model.layers[0].mlp.down_proj.weight.astype(mx.float16)
    model.model.layers[0].mlp.down_proj.weight = half
    decoder, _ = numpy_decoder(model, NumpyProducts())
    assert decoder is not None
    assert decoder.layers[0].down.dtype == np.float32
    assert np.array_equal(decoder.layers[0].down, np.array(half.astype(mx.float32)))


def test_weights_that_are_neither_floating_point_nor_quantized_keep_mlx_lms_model() -> None:
    model = _llama()
    model.model.layers[1].self_attn.o_proj.weight = mx.zeros((64, 64), dtype=mx.int32)
    said = "weights neither floating point nor quantized matrices"
    assert numpy_decoder(model, NumpyProducts(), release=True) == (None, said)
    assert all(layer is not None for layer in model.model.layers)  # refused before anything was let go


@pytest.mark.packs
def test_the_numpy_decoder_generates_smollm2s_greedy_tokens_with_its_logits() -> None:
    products = products_for(find_openblas())  # what a CPU load picks here
    path = default_models_dir(os.environ) / "smollm2-135m-instruct"
    if not (path / "config.json").is_file():
        pytest.skip(f"model pack smollm2-135m-instruct is not installed in {path.parent}")
    model, tokenizer = mlx_lm_load(str(path))
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED)]:
        model.update_modules(tree_unflatten([(name, _float32(module))]))
    mx.eval(model.parameters())
    decoder = _decoder(model, products)
    prompt = tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 6)[:41]
    theirs, ours = make_prompt_cache(model), decoder.make_cache()
    expected = _logits(model, prompt, theirs)
    decoder.read(mx.array(prompt[:23])[None], ours)
    got = _logits(decoder, prompt[23:], ours)
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, float(np.abs(expected).max()))
    token = int(expected.argmax())
    for _ in range(5):
        expected, got = _logits(model, [token], theirs), _logits(decoder, [token], ours)
        assert got.argmax() == expected.argmax()
        assert np.abs(got - expected).max() < 1e-3 * max(1.0, float(np.abs(expected).max()))
        token = int(expected.argmax())
