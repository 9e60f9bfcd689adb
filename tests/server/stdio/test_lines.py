"""Splitting the client's bytes into lines under a cap."""

from __future__ import annotations

from server.stdio.lines import HEAD_BYTES, LineSplitter, TooLong


def test_lines_arrive_whole_whatever_the_pieces_and_blank_lines_and_carriage_returns_are_dropped() -> None:
    s = LineSplitter(100)
    stream = b'{"a":1}\r\n\n  \n{"b":2}\n{"c"'
    got: list[bytes | TooLong] = []
    for i in range(len(stream)):
        got += s.feed(stream[i : i + 1])
    assert got == [b'{"a":1}', b'{"b":2}']
    assert s.holding == 4 and s.close() == [b'{"c"'] and s.close() == []


def test_the_cap_counts_the_line_without_its_newline_and_one_byte_more_is_refused() -> None:
    s = LineSplitter(10)
    assert s.feed(b"0123456789\n") == [b"0123456789"]
    assert s.feed(b"0123456789A\n") == [TooLong(11, b"0123456789A")]
    assert s.feed(b"ok\n") == [b"ok"]


def test_an_over_long_line_is_discarded_as_it_arrives_and_never_held_whole() -> None:
    s = LineSplitter(1000)
    out: list[bytes | TooLong] = []
    out += s.feed(b'{"id":7,' + b"x" * 600)
    for _ in range(100):
        out += s.feed(b"y" * 4096)
        assert s.holding == 0  # past the cap nothing is kept
    out += s.feed(b"z\nnext\n")
    assert len(out) == 2 and isinstance(out[0], TooLong)
    assert out[0].size == 8 + 600 + 100 * 4096 + 1 and out[0].head == (b'{"id":7,' + b"x" * 600)[:HEAD_BYTES]
    assert out[1] == b"next"


def test_an_over_long_last_line_without_a_newline_is_reported_at_the_end() -> None:
    s = LineSplitter(4)
    assert s.feed(b"abcdefgh") == []
    assert s.close() == [TooLong(8, b"abcdefgh")]
