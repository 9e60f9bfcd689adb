"""The one parser for what clients send: both strategies agree, and every limit holds at +/- 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import jsonparse
from server.jsonparse import MAX_DEPTH, JSONParseError, parse, parse_large, parse_small
from tests.support.processes import ROOT

scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text()
scalars |= st.floats(allow_nan=False, allow_infinity=False)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(documents, st.booleans(), st.sampled_from(["", " ", "\n\t ", "\r"]))
def test_the_iterative_parser_reads_every_document_as_the_inline_one_does(
    value: object, ascii_only: bool, ws: str
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, separators=(f",{ws}", f":{ws}"))
    data = (ws + text + ws).encode()
    assert parse_large(data) == parse_small(data) == json.loads(data)


BROKEN = [
    b"",
    b"   ",
    b"[1,]",
    b'{"a":1,}',
    b"{'a':1}",
    b"[1 2]",
    b'{"a" 1}',
    b"01",
    b"1.",
    b"NaN",
    b"[Infinity]",
    b"[-Infinity]",
    b'"\\ud800"',
    b'"a\x01b"',
    b'"\xff"',
    b'"\xed\xa0\x80"',
    b'{"a":"b"\xff}',
    b"[1]x",
    b"tru",
    b"nul",
    b'"unterminated',
    b'"\\q"',
    b"\xef\xbb\xbf{}",
    b"{1:2}",
]


@pytest.mark.parametrize("data", BROKEN)
def test_both_strategies_refuse_what_is_not_strict_json(data: bytes) -> None:
    for strategy in (parse_small, parse_large):
        with pytest.raises(JSONParseError) as caught:
            strategy(data)
        assert not caught.value.limit


@pytest.mark.parametrize("open_, close_", [(b"[", b"]"), (b'{"k":', b"}")])
def test_nesting_up_to_the_depth_limit_parses_and_one_level_more_is_refused(open_: bytes, close_: bytes) -> None:
    inner = b"1" if open_ != b"[" else b""
    ok = open_ * MAX_DEPTH + inner + close_ * MAX_DEPTH
    assert parse_small(ok) == parse_large(ok)
    too_deep = open_ * (MAX_DEPTH + 2) + inner + close_ * (MAX_DEPTH + 2)
    for strategy in (parse_small, parse_large):
        with pytest.raises(JSONParseError, match=f"deeper than {MAX_DEPTH}") as caught:
            strategy(too_deep)
        assert caught.value.limit


def test_an_unbounded_opening_run_is_refused_without_recursion() -> None:
    for strategy in (parse_small, parse_large):
        with pytest.raises(JSONParseError, match="deeper"):
            strategy(b"[" * 1_000_000)


def test_the_value_and_string_limits_hold_at_plus_and_minus_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonparse, "MAX_VALUES", 11)
    assert parse_large(b"[" + b",".join([b"0"] * 10) + b"]") == [0] * 10  # 10 values and the array
    with pytest.raises(JSONParseError, match="more than 11 values") as caught:
        parse_large(b"[" + b",".join([b"0"] * 11) + b"]")
    assert caught.value.limit
    monkeypatch.setattr(jsonparse, "MAX_STRING_BYTES", 8)
    assert parse_large(b'["12345678"]') == ["12345678"]
    assert parse_large(b'["\\\\\\\\\\\\\\\\"]') == ["\\\\\\\\"]  # 8 bytes as written
    with pytest.raises(JSONParseError, match="longer than 8 bytes"):
        parse_large(b'["123456789"]')


def test_large_documents_take_the_iterative_path_and_errors_never_repeat_the_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(jsonparse, "parse_large", lambda data: calls.append(len(data)) or [])
    big = b'["' + b"s" * jsonparse.INLINE_MAX + b'"]'
    parse(big)
    parse(b"[1]")
    assert calls == [len(big)]
    secret = b'{"jsonrpc":"2.0","method":"' + b"SECRET" * 100 + b'",}'
    for strategy in (parse_small, jsonparse._Large(secret).document):
        with pytest.raises(JSONParseError) as caught:
            strategy(secret) if strategy is parse_small else strategy()  # type: ignore[call-arg]
        assert "SECRET" not in caught.value.reason and len(caught.value.reason) < 200


def test_a_fresh_process_loads_only_the_compiled_parser_and_pydantic_later_shares_it() -> None:
    code = (
        "import sys, server.jsonparse as j\n"
        "assert 'pydantic_core' not in sys.modules and j.parse(b'[1]') == [1]\n"
        "import pydantic, pydantic_core\n"
        "class M(pydantic.BaseModel):\n    a: list[int]\n"
        "assert M.model_validate_json('{\"a\":[2]}').a == [2] and pydantic_core.from_json is j.from_json\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-500:]
