from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from adapters.mlx_bert import CrossEncoder, SentenceEncoder
from adapters.numpy_bert import NumpyBert
from adapters.numpy_halves import SPLIT_FROM, Halves


@pytest.fixture
def encoder(tiny_bert_dir: Path) -> Iterator[SentenceEncoder]:
    enc = SentenceEncoder.load(tiny_bert_dir, forward="numpy")
    yield enc
    enc.close()


def _batch(rows: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rows)
    ids = rng.integers(5, 90, size=(rows, width))
    mask = np.ones((rows, width), np.int64)
    mask[1::3, width // 2 :] = 0  # some rows padded
    return ids * mask, np.zeros_like(ids), mask


class _Held:
    """Stands in for OpenBLAS's one-thread hold: records when it is entered and left."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self.events.append("held")
        try:
            yield
        finally:
            self.events.append("released")


def _workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("encoder-half")}


def test_a_batch_in_halves_gives_the_whole_batchs_rows_with_the_second_half_on_the_worker(
    encoder: SentenceEncoder,
) -> None:
    assert encoder.numpy_model is not None
    ids, types, mask = _batch(9, 20)
    whole = encoder._numpy_rows(encoder.numpy_model, ids, types, mask).copy()
    threads: list[tuple[str, int]] = []

    def rows(model: NumpyBert, *batch: np.ndarray) -> np.ndarray:
        threads.append((threading.current_thread().name, len(batch[0])))
        return encoder._numpy_rows(model, *batch)

    held, before = _Held(), _workers()
    halves = Halves(encoder.numpy_model, held)
    split = halves(rows, ids, types, mask)
    assert np.allclose(split, whole, atol=1e-6)
    assert sorted(n for _, n in threads) == [4, 5]
    assert {name.startswith("encoder-half") for name, _ in threads} == {True, False}
    assert held.events == ["held", "released"]
    started = _workers() - before
    assert len(started) == 1
    halves.close()
    assert not any(t.is_alive() for t in started)
    assert not halves.splits(ids)  # closed: later batches run whole


def test_a_failing_half_reaches_the_caller_once_both_halves_are_done(encoder: SentenceEncoder) -> None:
    assert encoder.numpy_model is not None
    ids, types, mask = _batch(6, 20)
    done = threading.Event()
    held = _Held()

    def rows(model: NumpyBert, *batch: np.ndarray) -> np.ndarray:
        if threading.current_thread().name.startswith("encoder-half"):
            out = encoder._numpy_rows(model, *batch)
            done.set()
            return out
        raise ValueError("this half failed")

    halves = Halves(encoder.numpy_model, held)
    with pytest.raises(ValueError, match="this half failed"):
        halves(rows, ids, types, mask)
    assert done.is_set() and held.events == ["held", "released"]
    halves.close()


def test_only_batches_of_two_rows_or_more_and_enough_tokens_are_split(encoder: SentenceEncoder) -> None:
    assert encoder.numpy_model is not None
    halves = Halves(encoder.numpy_model, _Held())
    assert not halves.splits(np.zeros((1, SPLIT_FROM)))
    assert not halves.splits(np.zeros((2, SPLIT_FROM // 2 - 1)))
    assert halves.splits(np.zeros((2, SPLIT_FROM // 2)))
    before = _workers()
    halves.close()  # never split a batch: no thread was started, none is left
    assert _workers() - before == set()


def test_the_twin_shares_the_weights_but_not_the_buffers(encoder: SentenceEncoder) -> None:
    model = encoder.numpy_model
    assert model is not None
    twin = model.twin()
    assert twin.word is model.word and twin.layers is model.layers
    ids, types, mask = _batch(3, 12)
    first = model(ids, types, mask)
    second = twin(ids, types, mask)
    assert first is not second and np.array_equal(first, second)
    assert twin.act is not model.act


def test_a_cross_encoders_batch_in_halves_scores_like_the_whole_batch(tiny_cross_dir: Path) -> None:
    scorer = CrossEncoder.load(tiny_cross_dir, forward="numpy")
    assert scorer.numpy_model is not None
    ids, types, mask = _batch(7, 20)
    types[:, 10:] = 1  # the document's segment
    whole = scorer._numpy_rows(scorer.numpy_model, ids, types, mask).copy()
    halves = Halves(scorer.numpy_model, _Held())
    assert np.allclose(halves(scorer._numpy_rows, ids, types, mask), whole, atol=1e-6)
    halves.close()
    scorer.close()
