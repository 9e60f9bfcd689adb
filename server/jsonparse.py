"""The one JSON parser for what clients send: bounded in depth, size and work, and never recursive.

Every message a client sends is parsed exactly once, here, whatever the transport. The
limits are those of a conservative streaming parser:

- nesting: at most `MAX_DEPTH` levels of arrays and objects;
- values: at most `MAX_VALUES` (strings, numbers, literals, arrays, objects) per document;
- one string (a key or a value) at most `MAX_STRING_BYTES` bytes as written;
- strict JSON: UTF-8 only, no NaN/Infinity, no trailing commas, one value per document.

Two strategies, one grammar. Documents up to `INLINE_MAX` bytes go to the Rust parser that
ships with pydantic (`pydantic_core.from_json`, which stops at its own depth limit of 200 and
decodes ~1 GB/s); at that size no document costs more than a few milliseconds. Larger ones
go to `parse_large`, an iterative loop that walks the structure in Python and hands each
string and number token to the same Rust parser, so both paths decode tokens identically.
`parse_large` is meant for a worker thread: the Rust parser holds the GIL for a whole
document (a 16 MiB line of escaped text would freeze every other thread for ~140 ms),
while the Python loop gives it up every few milliseconds and each token it hands over is
bounded by `MAX_STRING_BYTES`.

Error messages name the problem and a byte offset, never the input.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader
from importlib.util import find_spec, module_from_spec, spec_from_file_location

MAX_DEPTH = 200
MAX_VALUES = 200_000
MAX_STRING_BYTES = 4 * 1024 * 1024
INLINE_MAX = 256 * 1024
_GC_PAUSE_FROM = 16 * 1024  # documents this large may hold thousands of containers

# patterns compiled on first use (`re` caches them): the fast start never parses a large document
_WS = rb"[ \t\r\n]{0,65536}"
# a JSON number; digit runs are bounded so one regex call stays short on hostile input
_NUMBER = rb"-?(?:0|[1-9][0-9]{0,4400})(?:\.[0-9]{1,4400})?(?:[eE][-+]?[0-9]{1,4400})?"
_LITERALS = {ord("t"): (b"true", True), ord("f"): (b"false", False), ord("n"): (b"null", None)}
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


def _rust_parser() -> Callable[..., object]:
    """pydantic_core's `from_json`, without the package's Python layer when nothing has imported it yet.

    `import pydantic_core` costs ~25 ms (its typing-heavy schema module): half of what the stdio
    fast start takes to its first answer. The parser lives in the package's compiled extension,
    which loads in ~3 ms. It is registered under its own name, so when pydantic imports the
    package later it finds the extension loaded (a compiled module is initialised once per
    process) and both share it. Only done while this is the only thread (the fast start's
    beginning); anything unexpected falls back to the ordinary import.
    """
    name = "pydantic_core._pydantic_core"
    if "pydantic_core" not in sys.modules and name not in sys.modules and threading.active_count() == 1:
        try:
            spec = find_spec("pydantic_core")
            folder = (spec.submodule_search_locations or [""])[0] if spec is not None else ""
            path = next(
                p for s in EXTENSION_SUFFIXES if os.path.exists(p := os.path.join(folder, "_pydantic_core" + s))
            )
            loader = ExtensionFileLoader(name, path)
            extension = module_from_spec(spec_from_file_location(name, path, loader=loader))  # type: ignore[arg-type]
            sys.modules[name] = extension
            loader.exec_module(extension)
            parser: Callable[..., object] = extension.from_json
            return parser
        except Exception:  # an unusual install: the ordinary import below
            sys.modules.pop(name, None)
    from pydantic_core import from_json

    return from_json


from_json = _rust_parser()


class JSONParseError(ValueError):
    """The document is not JSON, or breaks a limit. `reason` is safe to show the sender."""

    def __init__(self, reason: str, *, limit: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit  # a size or depth limit, rather than broken JSON


def parse(data: bytes) -> object:
    """Parse one document on the calling thread (see `parse_large` for what is fit for a worker)."""
    return parse_small(data) if len(data) <= INLINE_MAX else parse_large(data)


def parse_small(data: bytes) -> object:
    try:
        if len(data) < _GC_PAUSE_FROM:
            return from_json(data, allow_inf_nan=False, cache_strings=True)
        with _collector_paused():
            return from_json(data, allow_inf_nan=False, cache_strings=True)
    except ValueError as exc:
        raise _translate(str(exc)) from None


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while a document is built: everything it allocates is alive until it is done,
    so a collection then (a full one walks every object) would cost the event loop time and free nothing."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _translate(message: str) -> JSONParseError:
    if message.startswith("recursion limit exceeded"):
        return JSONParseError(f"nested deeper than {MAX_DEPTH} levels", limit=True)
    if message.startswith("number out of range"):
        return JSONParseError("a number too large to represent", limit=True)
    return JSONParseError(f"invalid JSON: {message[:120]}")


def parse_large(data: bytes) -> object:
    """The iterative parser: same grammar and limits, no recursion, the GIL released between tokens."""
    with _collector_paused():
        return _Large(data).document()


class _Large:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.values = 0
        self._number = re.compile(_NUMBER)
        self._ws_run = re.compile(_WS)

    def document(self) -> object:
        self._ws()
        value = self._value_tree()
        self._ws()
        if self.pos != len(self.data):
            raise JSONParseError(f"invalid JSON: trailing characters at byte {self.pos}")
        return value

    def _value_tree(self) -> object:
        # stack entries: a list being filled, or [dict, pending key]
        stack: list[list[object]] = []
        while True:
            value, opened = self._scalar_or_open(len(stack))
            if opened is not None:
                stack.append(opened)
                if self._close_if_empty(opened):
                    value = self._pop(stack)
                else:
                    continue
            while True:  # place `value`, then close every container that ends here
                if not stack:
                    return value
                top = stack[-1]
                self._place(top, value)
                self._ws()
                sep = self._next_byte()
                if sep == ord(","):
                    self._ws()
                    if isinstance(top[0], dict):
                        top[1] = self._key()
                    break
                if sep == (ord("]") if isinstance(top[0], list) else ord("}")):
                    value = self._pop(stack)
                    continue
                raise JSONParseError(f"invalid JSON: expected ',' or a closing bracket at byte {self.pos - 1}")

    def _scalar_or_open(self, depth: int) -> tuple[object, list[object] | None]:
        self._count()
        c = self._peek()
        if c in (ord("["), ord("{")):
            if depth >= MAX_DEPTH:
                raise JSONParseError(f"nested deeper than {MAX_DEPTH} levels", limit=True)
            self.pos += 1
            self._ws()
            return None, ([[]] if c == ord("[") else [{}, None])
        if c == _QUOTE:
            return self._string(), None
        if c == ord("-") or ord("0") <= c <= ord("9"):
            m = self._number.match(self.data, self.pos)
            if m is None:
                raise JSONParseError(f"invalid JSON: invalid number at byte {self.pos}")
            self.pos = m.end()
            try:
                return parse_small(m.group()), None
            except JSONParseError as exc:
                raise JSONParseError(f"{exc.reason} at byte {m.start()}", limit=exc.limit) from None
        literal = _LITERALS.get(c)
        if literal is not None and self.data.startswith(literal[0], self.pos):
            self.pos += len(literal[0])
            return literal[1], None
        raise JSONParseError(f"invalid JSON: expected a value at byte {self.pos}")

    def _close_if_empty(self, opened: list[object]) -> bool:
        c = self._peek()
        if c == (ord("]") if isinstance(opened[0], list) else ord("}")):
            self.pos += 1
            return True
        if isinstance(opened[0], dict):
            opened[1] = self._key()
        return False

    def _key(self) -> str:
        if self._peek() != _QUOTE:
            raise JSONParseError(f"invalid JSON: expected a key at byte {self.pos}")
        key = self._string()
        self._ws()
        if self._next_byte() != ord(":"):
            raise JSONParseError(f"invalid JSON: expected ':' at byte {self.pos - 1}")
        self._ws()
        assert isinstance(key, str)
        return key

    @staticmethod
    def _place(top: list[object], value: object) -> None:
        container = top[0]
        if isinstance(container, list):
            container.append(value)
        else:
            assert isinstance(container, dict) and isinstance(top[1], str)
            container[top[1]] = value

    @staticmethod
    def _pop(stack: list[list[object]]) -> object:
        return stack.pop()[0]

    def _string(self) -> object:
        start, data = self.pos, self.data
        limit = min(len(data), start + 1 + MAX_STRING_BYTES + 1)
        i = start + 1
        while True:
            q = data.find(b'"', i, limit)
            if q < 0:
                if limit < len(data):
                    raise JSONParseError(f"a string longer than {MAX_STRING_BYTES} bytes", limit=True)
                raise JSONParseError(f"invalid JSON: unterminated string at byte {start}")
            k = q - 1
            while data[k] == _BACKSLASH:
                k -= 1
            if (q - 1 - k) % 2 == 0:  # an even run of backslashes: the quote is not escaped
                break
            i = q + 1
        self.pos = q + 1
        try:
            return parse_small(data[start : q + 1])
        except JSONParseError:
            raise JSONParseError(
                f"invalid JSON: a bad string (escape, control character or UTF-8) at byte {start}"
            ) from None

    def _count(self) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise JSONParseError(f"more than {MAX_VALUES} values", limit=True)

    def _ws(self) -> None:
        while (m := self._ws_run.match(self.data, self.pos)) is not None and m.end() != self.pos:
            self.pos = m.end()

    def _peek(self) -> int:
        if self.pos >= len(self.data):
            raise JSONParseError(f"invalid JSON: unexpected end at byte {self.pos}")
        return self.data[self.pos]

    def _next_byte(self) -> int:
        c = self._peek()
        self.pos += 1
        return c
