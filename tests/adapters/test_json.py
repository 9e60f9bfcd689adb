"""The bounded decoder: the same values as orjson for any document, pieces bounded before they are parsed."""

from __future__ import annotations

import json
import threading

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters._json import DecodeLimits, decode
from adapters.errors import UpstreamProtocolError

# Tiny thresholds so every generated document takes the cut-and-refill path and most strings are cut.
CUT_EVERYTHING = DecodeLimits(whole_bytes=0, cut_string_bytes=3, max_array_items=64)

scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(['"', "\\", "[1,2]", "", '"]['])
# Keys stay short and non-empty (never cut); cut keys are covered on their own below.
keys = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=3).filter(lambda k: len(json.dumps(k)) <= 5)
documents = st.recursive(
    scalars | texts,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(documents, st.sampled_from([None, 1]))
def test_any_document_decodes_to_what_orjson_reads(document: object, indent: int | None) -> None:
    body = json.dumps(document, indent=indent).encode()
    try:
        expected = orjson.loads(body)
    except orjson.JSONDecodeError:
        return  # numbers orjson refuses are refused by both
    assert decode(body, "t", CUT_EVERYTHING) == expected


def test_a_long_or_empty_key_is_restored_and_two_of_them_in_one_object_are_refused() -> None:
    assert decode(b'{"": [1], "k": {"long key": "long value"}}', "t", CUT_EVERYTHING) == {
        "": [1],
        "k": {"long key": "long value"},
    }
    with pytest.raises(UpstreamProtocolError, match="cannot be placed unambiguously"):
        decode(b'{"long key": 1, "other key": 2}', "t", CUT_EVERYTHING)


@pytest.mark.parametrize(
    "body",
    [b'{"a": [1, 2', b"[1,,2]", b'{"a": "x', b'{"a": 1} trailing', b"", b'{"a": "\\u12"}', b"[" * 5000 + b"]" * 5000],
)
def test_broken_documents_are_protocol_errors_on_both_paths(body: bytes) -> None:
    for limits in (DecodeLimits(), CUT_EVERYTHING):
        with pytest.raises(UpstreamProtocolError):
            decode(body, "t", limits)


def test_a_vector_longer_than_the_limit_is_refused_from_its_bytes_naming_its_size() -> None:
    body = b'{"embeddings": [[' + b"0," * 599_999 + b"0]]}"
    with pytest.raises(UpstreamProtocolError, match="about 600000 dimensions; the limit is 65536"):
        decode(body, "ollama embed", DecodeLimits())


def test_a_vector_just_over_the_item_limit_is_refused_and_one_at_the_limit_is_read() -> None:
    limits = DecodeLimits(whole_bytes=0, max_array_items=100)
    at_limit = orjson.dumps({"v": [0.5] * 100})
    assert decode(at_limit, "t", limits) == {"v": [0.5] * 100}
    with pytest.raises(UpstreamProtocolError, match="about 101 dimensions; the limit is 100"):
        decode(orjson.dumps({"v": [0.5] * 101}), "t", limits)


def test_structure_beyond_the_skeleton_limit_is_refused_naming_the_limit() -> None:
    body = orjson.dumps([{"k": i} for i in range(20_000)])
    with pytest.raises(UpstreamProtocolError, match="the limit is 1000"):
        decode(body, "t", DecodeLimits(whole_bytes=0, max_skeleton_bytes=1000))


def test_a_string_beyond_the_string_limit_is_refused_before_it_is_parsed() -> None:
    body = orjson.dumps({"content": "x" * 5000})
    with pytest.raises(UpstreamProtocolError, match="string of 5000 bytes; the limit is 4096"):
        decode(body, "t", DecodeLimits(whole_bytes=0, cut_string_bytes=10, max_string_bytes=4096))


def test_large_answers_round_trip_with_vectors_and_long_strings_intact() -> None:
    vectors = [[i + j / 1000 for j in range(384)] for i in range(300)]
    document = {"data": [{"index": i, "embedding": v, "note": "é" * 70_000} for i, v in enumerate(vectors)]}
    body = orjson.dumps(document)
    assert len(body) > DecodeLimits().whole_bytes
    assert decode(body, "t") == document


def test_decoding_is_pure_and_safe_from_any_thread() -> None:
    body = orjson.dumps({"embeddings": [[0.25] * 512] * 600})
    results: list[object] = []
    workers = [threading.Thread(target=lambda: results.append(decode(body, "t"))) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results == [orjson.loads(body)] * 4
