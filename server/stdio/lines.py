"""Bytes to lines, with a cap: a line over it is counted and skipped, never held whole.

Standard library only: the fast start splits lines before the SDK is imported, and hands
the splitter, mid-line if need be, to the server's reader.
"""

from __future__ import annotations

from typing import NamedTuple

HEAD_BYTES = 256  # kept from an over-long line: enough to find its id, never echoed


class TooLong(NamedTuple):
    """A line longer than the cap, already discarded: its size and its first bytes."""

    size: int
    head: bytes


class LineSplitter:
    """`feed(chunk)` returns the complete lines in it (without the newline) and `TooLong` markers.

    A line's size does not count its newline (nor a carriage return before it). Blank lines are
    skipped. At most `max_line_bytes` of a partial line are held; past that the rest of the
    line is discarded as it arrives, up to its newline.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False
        self._discarded = 0
        self._head = b""

    @property
    def holding(self) -> int:
        """Bytes of an unfinished line held now."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | TooLong]:
        out: list[bytes | TooLong] = []
        start, cap = 0, self.max_line_bytes
        while start < len(data):
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl
            if self._discarding:
                self._discarded += end - start
            elif len(self._buf) + (end - start) > cap:
                self._discarding = True
                self._head = (bytes(self._buf[:HEAD_BYTES]) + data[start : min(end, start + HEAD_BYTES)])[:HEAD_BYTES]
                self._discarded = len(self._buf) + (end - start)
                self._buf.clear()
            elif nl >= 0:
                self._emit(out, data, start, end)
            else:
                self._buf += data[start:]
            if nl < 0:
                break
            if self._discarding:
                out.append(TooLong(self._discarded, self._head))
                self._discarding, self._discarded, self._head = False, 0, b""
            start = nl + 1
        return out

    def close(self) -> list[bytes | TooLong]:
        """At end of input: a last line without a newline, or the over-long one being discarded."""
        if self._discarding:
            self._discarding = False
            return [TooLong(self._discarded, self._head)]
        out: list[bytes | TooLong] = []
        if self._buf:
            tail = bytes(self._buf)
            self._buf.clear()
            self._emit(out, tail, 0, len(tail))
        return out

    def _emit(self, out: list[bytes | TooLong], data: bytes, start: int, end: int) -> None:
        if self._buf:
            line = bytes(self._buf) + data[start:end]
            self._buf.clear()
        else:
            line = data[start:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.strip(b" \t\r"):
            out.append(line)
