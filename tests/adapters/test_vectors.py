"""Vector checks: the width asked for, the manifest's pin, or the first answer's; never past the maximum."""

from __future__ import annotations

import pytest

from adapters._vectors import VectorBounds, float_rows
from adapters.errors import UpstreamProtocolError
from adapters.naming import ollama_model_name


def bounds(pinned: dict[str, int] | None = None, maximum: int = 65_536) -> VectorBounds:
    return VectorBounds(pinned or {}, ollama_model_name, maximum)


def test_the_first_answer_fixes_the_width_for_every_spelling_of_the_model() -> None:
    vb = bounds()
    vb.check("all-minilm", None, [[0.1] * 384], "embed")
    vb.check("ALL-MINILM:latest", None, [[0.1] * 384], "embed")
    with pytest.raises(UpstreamProtocolError, match=r"vector 0 has 512 dimensions, expected 384 \(the model's earlier"):
        vb.check("library/all-minilm", None, [[0.1] * 512], "embed")


def test_a_pinned_width_is_enforced_from_the_first_answer() -> None:
    vb = bounds({"nomic-embed-text": 768})
    with pytest.raises(UpstreamProtocolError, match=r"expected 768 \(pinned in the adapter manifest"):
        vb.check("nomic-embed-text:latest", None, [[0.1] * 384], "embed")
    vb.check("nomic-embed-text", None, [[0.1] * 768], "embed")


def test_the_width_asked_for_wins_and_is_not_learned_as_the_model_s() -> None:
    vb = bounds()
    vb.check("m", 128, [[0.1] * 128, [0.2] * 128], "embed")
    with pytest.raises(UpstreamProtocolError, match=r"expected 128 \(the dimensions asked for"):
        vb.check("m", 128, [[0.1] * 127], "embed")
    vb.check("m", None, [[0.1] * 384], "embed")  # the native width is still free to be learned
    assert vb.expected("m", None) == 384


def test_a_vector_wider_than_the_maximum_is_refused_naming_the_limit() -> None:
    vb = bounds(maximum=1000)
    with pytest.raises(UpstreamProtocolError, match="vector 0 has 1001 dimensions; the limit is 1000"):
        vb.check("m", None, [[0.0] * 1001], "embed")
    assert vb.expected("m", None) is None


def test_ragged_vectors_in_one_answer_name_the_odd_one() -> None:
    with pytest.raises(UpstreamProtocolError, match=r"vector 2 has 3 dimensions, expected 4$"):
        bounds().check("m", None, [[0.0] * 4, [0.0] * 4, [0.0] * 3], "embed")


def test_rows_must_be_non_empty_lists_of_finite_numbers_and_ints_widen_to_floats() -> None:
    rows = float_rows([[0, 1], [0.5, 0.5]], 2, 0, "embed")
    assert rows == [[0.0, 1.0], [0.5, 0.5]] and all(type(x) is float for r in rows for x in r)
    for bad in ([[]], [[True]], [["0.5"]], [[float("nan")]], [[1e308, 1e308]], ["row"]):
        with pytest.raises(UpstreamProtocolError, match="vector 7 is not"):
            float_rows(bad, 1, 7, "embed")
    with pytest.raises(UpstreamProtocolError, match="returned 1 vectors for 2 inputs"):
        float_rows([[0.1]], 2, 0, "embed")
