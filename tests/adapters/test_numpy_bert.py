from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from adapters.errors import ModelLoadError
from adapters.mlx_bert import CrossEncoder, SentenceEncoder
from adapters.numpy_bert import Gelu, activation, layer_norm, softmax_rows
from tests.support.tiny_bert import cosine, reference_embedding, reference_logit

# Odd lengths side by side (padding), one word, and past the tiny model's 24-token limit (cut to it).
TEXTS = ["rain", "the cat sits on the mat.", "a feline is resting on the rug today", " ".join(["cat"] * 60)]


def _exact_gelu(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])


def test_gelu_in_place_stays_within_a_millionth_of_erf_gelu_across_block_edges() -> None:
    # Not a multiple of the block size, and wide enough to reach past erf's clipped range on both sides.
    xs = np.linspace(-12.0, 12.0, 3 * (1 << 15) + 17, dtype=np.float32)
    y = xs.copy()
    Gelu()(y)
    assert np.all(np.abs(y - _exact_gelu(xs)) <= 1e-6 * np.maximum(1.0, np.abs(xs)))  # relative past |x| = 1
    assert np.all(np.isfinite(y))


def test_gelu_saturates_to_zero_and_to_x_far_out_without_overflow_warnings() -> None:
    xs = np.array([-3e38, -1e30, -1e6, -100.0, -20.0, -9.0, -0.0, 0.0, 1e-30, 9.0, 20.0, 100.0, 1e6, 1e30, 3e38])
    y = xs.astype(np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # an overflow it did not expect raises
        Gelu()(y)
    assert np.all(np.abs(y - _exact_gelu(xs.astype(np.float32))) <= 1e-6 * np.maximum(1.0, np.abs(xs)))
    assert np.all(y[xs <= -20.0] == 0.0) and np.array_equal(y[xs >= 9.0], xs[xs >= 9.0].astype(np.float32))


@pytest.mark.parametrize("width", [1, 2, 13, 32, 33, 100])
def test_softmax_rows_matches_a_plain_softmax_for_short_and_long_rows_with_masked_and_large_scores(width: int) -> None:
    rng = np.random.default_rng(width)
    scores = (rng.standard_normal((7 * 12 * width, width)) * 30.0).astype(np.float32)
    scores[::5, -1] -= np.float32(1e4)  # a padded key, as the additive mask leaves it
    scores[1::7] += np.float32(500.0)  # large enough to overflow exp without the rows' maxima taken off
    shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    expected = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    got, scratch = scores.copy(), np.empty(len(scores), np.float32)
    softmax_rows(got, scratch)
    assert np.all(np.isfinite(got))
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_layer_norm_in_place_matches_a_float64_layer_norm_for_rows_far_from_zero() -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((37, 384)) * 3.0 + rng.uniform(-50, 50, size=(37, 1))).astype(np.float32)
    weight, bias = rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(axis=1, keepdims=True)
    expected = centred / np.sqrt((centred**2).mean(axis=1, keepdims=True) + 1e-12) * weight + bias
    layer_norm(x, weight, bias, 1e-12, np.empty((37, 1), np.float32))
    assert np.allclose(x, expected, atol=2e-5)


def test_the_other_activations_follow_their_definitions() -> None:
    x = np.linspace(-5, 5, 101, dtype=np.float32)
    relu, tanh_gelu = x.copy(), x.copy()
    activation("relu")(relu)
    activation("gelu_new")(tanh_gelu)
    assert np.array_equal(relu, np.maximum(x, 0))
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    assert np.allclose(tanh_gelu, expected, atol=1e-6)
    with pytest.raises(ModelLoadError, match="unsupported hidden_act 'swish'"):
        activation("swish")


def test_the_numpy_forward_pass_is_the_default_on_a_cpu_and_says_so(tiny_bert_dir: Path) -> None:
    enc = SentenceEncoder.load(tiny_bert_dir)
    assert enc.numpy_model is not None
    assert "numpy forward pass" in enc.layout and "(cpu)" in enc.layout
    assert SentenceEncoder.load(tiny_bert_dir, forward="mlx").numpy_model is None


def test_numpy_encoder_matches_a_float64_reference_bert_for_odd_lengths_one_text_and_the_longest(
    tiny_bert_dir: Path,
) -> None:
    enc = SentenceEncoder.load(tiny_bert_dir, forward="numpy")
    out = enc.encode(TEXTS)
    assert out.truncated == 1
    for text, vector in zip(TEXTS, out.vectors, strict=True):
        ids = enc.tokenizer.encode(text).ids[: enc.max_length]
        assert cosine(vector, reference_embedding(tiny_bert_dir, ids)) > 0.99999
        assert cosine(enc.encode([text]).vectors[0], vector) > 0.99999  # batch of one, no padding
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-6)


def test_numpy_and_mlx_forward_passes_give_the_same_vectors(tiny_bert_dir: Path) -> None:
    texts = [f"the cat {'sits ' * (i % 5)}on the mat" for i in range(11)]
    numpy_vectors = SentenceEncoder.load(tiny_bert_dir, forward="numpy").encode(texts).vectors
    mlx_vectors = SentenceEncoder.load(tiny_bert_dir, forward="mlx").encode(texts).vectors
    assert min(cosine(a, b) for a, b in zip(numpy_vectors, mlx_vectors, strict=True)) > 0.999999


def test_numpy_cross_encoder_scores_pairs_like_the_reference(tiny_cross_dir: Path) -> None:
    ce = CrossEncoder.load(tiny_cross_dir, forward="numpy")
    docs = ["paris is the capital of france", "rain", "stock market revenue grew " * 6]
    pairs = [("where is paris", d) for d in docs]
    logits = ce.logits(pairs)
    for (q, d), logit in zip(pairs, logits, strict=True):
        enc = ce.tokenizer.encode(q, d)
        enc.truncate(ce.max_length)
        assert logit == pytest.approx(reference_logit(tiny_cross_dir, enc.ids, enc.type_ids), abs=1e-4)
    assert np.allclose(ce.score("where is paris", docs).scores, 1 / (1 + np.exp(-logits)), atol=1e-6)


def test_batch_shapes_keep_a_bounded_set_of_buffers(tiny_bert_dir: Path) -> None:
    enc = SentenceEncoder.load(tiny_bert_dir, forward="numpy")
    assert enc.numpy_model is not None
    for n in range(1, 13):
        enc.encode(["rain"] * n)
    assert len(enc.numpy_model._buffers) == 8


def test_the_numpy_forward_pass_refuses_weights_that_are_not_float32(tiny_bert_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="needs float32 weights"):
        SentenceEncoder.load(tiny_bert_dir, forward="numpy", dtype="float16")


def test_buffers_too_large_to_keep_serve_their_call_and_are_let_go(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adapters.numpy_bert

    enc = SentenceEncoder.load(tiny_bert_dir, forward="numpy")
    assert enc.numpy_model is not None
    small = enc.encode(["rain"]).vectors[0]
    kept = dict(enc.numpy_model._buffers)
    assert len(kept) == 1
    monkeypatch.setattr(adapters.numpy_bert, "_KEPT_BYTES", sum(map(adapters.numpy_bert._nbytes, kept.values())) + 1)
    long_text = " ".join(["cat"] * 60)
    vector = enc.encode([long_text] * 3).vectors[0]
    assert enc.numpy_model._buffers == kept  # the larger shape's buffers were not kept
    assert (
        cosine(vector, reference_embedding(tiny_bert_dir, enc.tokenizer.encode(long_text).ids[: enc.max_length]))
        > 0.99999
    )
    assert cosine(enc.encode(["rain"]).vectors[0], small) > 0.999999
