from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from adapters.errors import ModelLoadError
from adapters.mlx_bert import CrossEncoder, SentenceEncoder, erf_rational, gelu_exact, gelu_fast
from tests.support.tiny_bert import cosine, reference_embedding, reference_hidden, reference_logit

DATA = Path(__file__).resolve().parent.parent / "data"
TEXTS = ["the cat sits on the mat.", "a feline is resting on the rug", "what is the capital of france?", "rain"]


def test_rational_erf_stays_within_a_millionth_of_erf() -> None:
    xs = np.linspace(-7.0, 7.0, 20001, dtype=np.float32)
    approx = np.array(erf_rational(mx.array(xs)))
    exact = np.array([math.erf(float(x)) for x in xs])
    assert np.abs(approx - exact).max() < 1e-6


def test_fast_gelu_matches_exact_gelu_closely() -> None:
    x = mx.random.normal((4096,), key=mx.random.key(0)) * 4
    assert float(mx.abs(gelu_fast(x) - gelu_exact(x)).max()) < 1e-5


@pytest.mark.parametrize(("fast_gelu", "numpy_softmax"), [(False, False), (True, False), (True, True)])
def test_tiny_encoder_matches_a_float64_reference_bert(
    tiny_bert_dir: Path, fast_gelu: bool, numpy_softmax: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adapters.mlx_bert

    # Batches this small normally keep MLX's attention; from one score on, the numpy softmax serves them.
    monkeypatch.setattr(adapters.mlx_bert, "NUMPY_SOFTMAX_FROM", 1 if numpy_softmax else 1 << 20)
    enc = SentenceEncoder.load(tiny_bert_dir, fast_gelu=fast_gelu, forward="mlx")
    out = enc.encode(TEXTS)
    assert out.vectors.shape == (len(TEXTS), 32)
    for text, vector in zip(TEXTS, out.vectors, strict=True):
        ids = enc.tokenizer.encode(text).ids
        assert cosine(vector, reference_embedding(tiny_bert_dir, ids)) > 0.99999
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
    assert out.tokens == sum(len(enc.tokenizer.encode(t).ids) for t in TEXTS)


def test_padding_to_the_longest_in_a_batch_leaves_each_vector_unchanged(tiny_bert_dir: Path) -> None:
    enc = SentenceEncoder.load(tiny_bert_dir)
    batch = enc.encode(TEXTS).vectors
    for text, vector in zip(TEXTS, batch, strict=True):
        assert cosine(enc.encode([text]).vectors[0], vector) > 0.99999


def test_inputs_past_the_max_length_are_cut_and_counted(tiny_bert_dir: Path) -> None:
    enc = SentenceEncoder.load(tiny_bert_dir)
    assert enc.max_length == 24  # sentence_bert_config.json wins over max_position_embeddings
    long_text = " ".join(["cat"] * 60)
    out = enc.encode([long_text, "dog"])
    assert out.truncated == 1
    full_ids = enc.tokenizer.encode(" ".join(["cat"] * 22)).ids  # [CLS] + 22 words + [SEP] = 24 tokens
    assert cosine(out.vectors[0], reference_embedding(tiny_bert_dir, full_ids)) > 0.99999


def test_a_token_budget_splits_a_batch_into_passes_without_changing_results(tiny_bert_dir: Path) -> None:
    enc = SentenceEncoder.load(tiny_bert_dir)
    texts = [f"the cat {'sits ' * (i % 7)}on the mat" for i in range(20)]
    whole = enc.encode(texts).vectors
    assert enc.forward_passes == 1
    reports: list[tuple[int, int]] = []
    split = enc.encode(texts, token_budget=40, on_chunk=lambda done, total: reports.append((done, total)))
    assert enc.forward_passes > 2
    assert [r[0] for r in reports] == sorted(r[0] for r in reports) and reports[-1] == (20, 20)
    assert min(cosine(a, b) for a, b in zip(whole, split.vectors, strict=True)) > 0.99999


def test_one_long_text_is_not_padded_into_a_batch_of_short_ones(tiny_bert_dir: Path) -> None:
    enc = SentenceEncoder.load(tiny_bert_dir)
    enc.encode(["rain"] * 8 + [" ".join(["cat"] * 60)], token_budget=4096)
    assert enc.forward_passes == 2


def test_batch_limit_caps_texts_per_pass(tiny_bert_dir: Path) -> None:
    enc = SentenceEncoder.load(tiny_bert_dir)
    enc.encode(["rain"] * 10, batch_limit=4)
    assert enc.forward_passes == 3


def test_cross_encoder_scores_pairs_like_bert_for_sequence_classification(tiny_cross_dir: Path) -> None:
    ce = CrossEncoder.load(tiny_cross_dir, fast_gelu=False)
    query, docs = "where is paris", ["paris is the capital of france", "stock market revenue grew"]
    pairs = [(query, d) for d in docs]
    logits = ce.logits(pairs)
    for (q, d), logit in zip(pairs, logits, strict=True):
        enc = ce.tokenizer.encode(q, d)
        assert set(enc.type_ids) == {0, 1}  # the document half is segment B
        assert logit == pytest.approx(reference_logit(tiny_cross_dir, enc.ids, enc.type_ids), abs=1e-4)
    scored = ce.score(query, docs)
    assert np.allclose(scored.scores, 1 / (1 + np.exp(-logits)), atol=1e-6)


def test_an_encoder_directory_without_a_head_is_refused_as_a_cross_encoder(tiny_bert_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="classifier"):
        CrossEncoder.load(tiny_bert_dir)


def test_missing_or_mismatched_files_raise_a_load_error_naming_the_file(tiny_bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        SentenceEncoder.load(tmp_path / "nope")
    broken = shutil.copytree(tiny_bert_dir, tmp_path / "broken")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        SentenceEncoder.load(broken)
    wrong = shutil.copytree(tiny_bert_dir, tmp_path / "wrong")
    cfg = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48}))
    with pytest.raises(ModelLoadError, match="does not fit"):
        SentenceEncoder.load(wrong)


# --- the real MiniLM pack -------------------------------------------------------


def _pack(name: str) -> Path:
    from server.paths import default_models_dir

    path = default_models_dir(os.environ) / name
    if not (path / "config.json").is_file():
        pytest.skip(f"model pack {name!r} is not installed at {path} (model-gateway models pull {name})")
    return path


@pytest.mark.packs
def test_minilm_matches_sentence_transformers_reference_vectors() -> None:
    ref = json.loads((DATA / "minilm_reference.json").read_text(encoding="utf-8"))
    expected = [np.array(v) for v in ref["vectors"]]
    for fast_gelu, forward in ((False, "mlx"), (True, "mlx"), (True, "numpy")):
        enc = SentenceEncoder.load(_pack("all-minilm-l6-v2"), fast_gelu=fast_gelu, forward=forward)
        out = enc.encode(ref["sentences"])
        assert min(cosine(a, b) for a, b in zip(out.vectors, expected, strict=True)) >= 0.9999
        assert out.truncated == 1  # the 300-word sentence
    assert enc.max_length == ref["max_seq_length"] == 256


@pytest.mark.packs
def test_minilm_scores_a_paraphrase_above_unrelated_text() -> None:
    enc = SentenceEncoder.load(_pack("all-minilm-l6-v2"))
    v = enc.encode(["The cat sits on the mat.", "A feline is resting on the rug.", "Quarterly revenue grew."]).vectors
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


@pytest.mark.packs
def test_cross_encoder_loads_minilm_weights_in_the_sequence_classification_layout(tmp_path: Path) -> None:
    src = _pack("all-minilm-l6-v2")
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, tmp_path / name)
    weights = {f"bert.{k}": v for k, v in mx.load(str(src / "model.safetensors")).items()}
    rng = np.random.default_rng(7)
    weights["classifier.weight"] = mx.array((rng.standard_normal((1, 384)) * 0.1).astype(np.float32))
    weights["classifier.bias"] = mx.array(np.array([0.05], dtype=np.float32))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), weights)
    enc = CrossEncoder.load(tmp_path).tokenizer.encode("how do i reset my password", "click forgot password")
    for forward in ("mlx", "numpy"):
        ce = CrossEncoder.load(tmp_path, fast_gelu=False, forward=forward)
        (logit,) = ce.logits([("how do i reset my password", "click forgot password")])
        assert logit == pytest.approx(reference_logit(tmp_path, enc.ids, enc.type_ids), abs=1e-4)
    assert reference_hidden(tmp_path, enc.ids, enc.type_ids).shape == (len(enc.ids), 384)


def test_the_numpy_softmax_serves_a_batch_by_its_count_of_scores_not_by_its_length(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adapters.mlx_bert

    enc = SentenceEncoder.load(tiny_bert_dir, forward="mlx")
    width = len(enc.tokenizer.encode("rain").ids)
    heads, layers = enc.config.num_attention_heads, enc.config.num_hidden_layers
    monkeypatch.setattr(adapters.mlx_bert, "NUMPY_SOFTMAX_FROM", 2 * heads * width * width)
    calls: list[int] = []
    real = adapters.mlx_bert.softmax
    monkeypatch.setattr(adapters.mlx_bert, "softmax", lambda scores: calls.append(1) or real(scores))
    single = enc.encode(["rain"]).vectors[0]
    assert calls == []  # one short input: MLX's fused attention
    batch = enc.encode(["rain"] * 4).vectors
    assert len(calls) == layers  # four of them: enough scores for numpy, once per layer
    for vector in batch:
        assert cosine(vector, single) > 0.99999
