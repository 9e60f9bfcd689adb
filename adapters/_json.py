"""Bounded JSON decoding of upstream answers: parsed once, and never in one long call.

orjson holds the GIL for the whole of a call (about 150 MB/s of float arrays here:
a 28 MiB embedding answer is one 190 ms call), so even in a worker thread one call
on a large body stalls the event loop. Bodies up to `whole_bytes` are parsed in one
call (a few ms at most). Larger ones are cut, at C speed and outside strings, into
number arrays (vectors), long strings and a skeleton of everything else; each piece
is one short call, and a worker thread gives the GIL back between pieces. Every
piece has a size bound checked before it is parsed, so a 6,000,000-element vector
is refused from its byte count, never materialised.

Exactness: every number array (even `[]`) and every empty or long string is cut and
replaced in the skeleton by `[]` or `""`; so each `[]`/`""` of the parsed skeleton is
a placeholder, and placeholders are refilled in document order.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from adapters.errors import UpstreamProtocolError

_QUOTE, _OPEN, _BACKSLASH = 0x22, 0x5B, 0x5C
# The longest text one number takes on the wire ("-1.2345678901234567e-308" and a separator).
_BYTES_PER_NUMBER = 32


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_array_items: int = 65_536  # the longest number array (a vector) an answer may hold
    max_string_bytes: int = 4 << 20
    max_skeleton_bytes: int = 4 << 20
    cut_string_bytes: int = 64 << 10  # longer strings are parsed on their own
    whole_bytes: int = 1 << 20  # bodies up to this size are parsed in one call


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    string: bool


def decode(body: bytes, what: str, limits: DecodeLimits = DecodeLimits()) -> Any:
    """The JSON value of `body`, or UpstreamProtocolError naming what is wrong and the limit."""
    if len(body) <= limits.whole_bytes:
        return _loads(body, what)
    skeleton, pieces = _cut(body, what, limits)
    if len(skeleton) > limits.max_skeleton_bytes:
        raise UpstreamProtocolError(
            f"{what}: the answer holds {len(skeleton)} bytes of structure besides vectors and long strings; "
            f"the limit is {limits.max_skeleton_bytes}"
        )
    root = _loads(skeleton, what)
    return _Refill(body, pieces, what, limits).run(root)


def _loads(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(f"{what}: upstream sent a body that is not JSON") from exc


@functools.lru_cache(maxsize=8)
def _array_pattern(max_bytes: int) -> re.Pattern[bytes]:
    # Possessive: a run is scanned once, never backtracked; its length is bounded before any parse.
    return re.compile(rb"\[([-+0-9.eE,\s]{0,%d}+)(\]?)" % max_bytes)


def _cut(body: bytes, what: str, limits: DecodeLimits) -> tuple[bytes, list[_Piece]]:
    """The skeleton (body with pieces replaced by placeholders) and the pieces, in document order."""
    row_bytes = limits.max_array_items * _BYTES_PER_NUMBER
    array = _array_pattern(row_bytes)
    parts: list[bytes] = []
    pieces: list[_Piece] = []
    pos = last = 0
    next_quote, next_open = body.find(b'"'), body.find(b"[")
    while next_quote >= 0 or next_open >= 0:
        if next_quote >= 0 and (next_open < 0 or next_quote < next_open):
            end = _string_end(body, next_quote)
            if end < 0:
                break  # unterminated: the skeleton parse reports it
            length = end - next_quote - 2
            if length == 0 or length > limits.cut_string_bytes:
                if length > limits.max_string_bytes:
                    raise UpstreamProtocolError(
                        f"{what}: the answer holds a string of {length} bytes; the limit is {limits.max_string_bytes}"
                    )
                parts += [body[last:next_quote], b'""']
                pieces.append(_Piece(next_quote, end, string=True))
                last = end
            pos = end
        else:
            match = array.match(body, next_open)
            assert match is not None  # the pattern matches any '['
            if match.group(2):
                parts += [body[last:next_open], b"[]"]
                pieces.append(_Piece(next_open, match.end(), string=False))
                pos = last = match.end()
            elif len(match.group(1)) == row_bytes:
                raise _oversized(body, next_open, what, limits.max_array_items)
            else:
                pos = next_open + 1
        # Each search runs once per position passed (-1 stays -1), so the cut is linear in the body.
        if 0 <= next_quote < pos:
            next_quote = body.find(b'"', pos)
        if 0 <= next_open < pos:
            next_open = body.find(b"[", pos)
    parts.append(body[last:])
    return b"".join(parts), pieces


def _string_end(body: bytes, start: int) -> int:
    """Index just past the closing quote of the string opening at `start`; -1 when unterminated."""
    search = start + 1
    while (close := body.find(b'"', search)) >= 0:
        backslashes = 0
        while body[close - 1 - backslashes] == _BACKSLASH:
            backslashes += 1
        if backslashes % 2 == 0:
            return close + 1
        search = close + 1
    return -1


def _oversized(body: bytes, start: int, what: str, limit: int) -> UpstreamProtocolError:
    end = body.find(b"]", start)
    items = body.count(b",", start, end if end >= 0 else len(body)) + 1
    return UpstreamProtocolError(
        f"{what}: the answer holds a vector of about {items} dimensions; the limit is {limit} dimensions"
    )


class _Refill:
    """Puts the pieces back into the parsed skeleton, walking it in document order without recursion."""

    def __init__(self, body: bytes, pieces: list[_Piece], what: str, limits: DecodeLimits) -> None:
        self._body = body
        self._pieces = iter(pieces)
        self._what = what
        self._limits = limits
        self._left = len(pieces)

    def run(self, root: Any) -> Any:
        value = self._take(root) if _is_placeholder(root) else root
        # One generator per open container; a nested container is walked before its later siblings.
        stack: list[Iterator[Any]] = [self._children(value)] if isinstance(value, list | dict) else []
        while stack:
            nested = next(stack[-1], None)
            if nested is None:
                stack.pop()
            else:
                stack.append(self._children(nested))
        if self._left:
            raise self._mismatch()
        return value

    def _children(self, node: list[Any] | dict[str, Any]) -> Iterator[Any]:
        """Fills this container's placeholders in order and yields each nested container when reached."""
        if isinstance(node, list):
            for i, item in enumerate(node):
                if _is_placeholder(item):
                    node[i] = self._take(item)
                elif isinstance(item, list | dict):
                    yield item
            return
        rebuilt: list[tuple[str, Any]] = []
        for key, item in list(node.items()):
            real_key = self._take(key) if key == "" else key
            if _is_placeholder(item):
                item = self._take(item)
            elif isinstance(item, list | dict):
                yield item
            rebuilt.append((real_key, item))
        node.clear()
        node.update(rebuilt)

    def _take(self, placeholder: Any) -> Any:
        piece = next(self._pieces, None)
        if piece is None or piece.string != isinstance(placeholder, str):
            raise self._mismatch()
        self._left -= 1
        if not piece.string and self._body.count(b",", piece.start, piece.end) >= self._limits.max_array_items:
            raise _oversized(self._body, piece.start, self._what, self._limits.max_array_items)
        return _loads(self._body[piece.start : piece.end], self._what)

    def _mismatch(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            f"{self._what}: the answer has object keys that cannot be placed unambiguously "
            "(repeated, or empty beside very long ones)"
        )


def _is_placeholder(value: Any) -> bool:
    return (isinstance(value, list) and not value) or (isinstance(value, str) and not value)
