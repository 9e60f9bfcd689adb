"""The audit trail's format, shared by the writer (server/audit.py) and the verifier (server/audit_verify.py).

A trail is one active file (`audit.jsonl`), its rotated segments
(`audit.jsonl.000001`, ...), its signed checkpoints (`audit.checkpoints.jsonl`)
and a lock file (`audit.jsonl.lock`) that every writing process takes around
each append. Each record line's `mac` is HMAC-SHA256 over the previous record's
mac and the record's canonical JSON; `prev` and `mac` ride along at the end of
the line. A `restart` record (prev = GENESIS) is where a writer began a new
link because the line before it could not be linked to (damaged); it is keyed
like every record, so nobody without the key can make one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

GENESIS = "0" * 64
SEGMENT_DIGITS = 6
_CHUNK = 4096


def canonical(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes every MAC and evidence hash is taken over (orjson: ~5x json)."""
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def evidence(value: Any) -> str:
    """sha256 of the canonical JSON of a request or response."""
    return hashlib.sha256(canonical(value)).hexdigest()


def record_mac(key: bytes, prev: str, body: Any) -> str:
    return mac_of(key, prev, canonical(body))


def mac_of(key: bytes, prev: str, canonical_body: bytes) -> str:
    return hmac.digest(key, prev.encode() + b"\n" + canonical_body, "sha256").hex()


class RecordMac:
    """`mac_of()` under one key, ~2.5x faster: HMAC-SHA256 (RFC 2104) with the key's inner and outer pads hashed once.

    Each record then costs two hash copies and three short updates instead of keying HMAC again (~1.1 vs ~2.8 us).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256().block_size
        padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def __call__(self, prev: str, canonical_body: bytes) -> str:
        inner = self._inner.copy()
        inner.update(prev.encode() + b"\n" + canonical_body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def checkpoint_mac(key: bytes, prev: str, body: Any) -> str:
    # a distinct prefix, so a record line can never pass as a checkpoint or the reverse
    return hmac.new(key, b"checkpoint\n" + prev.encode() + b"\n" + canonical(body), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A public fingerprint of the key, so the verifier can say 'wrong key' rather than 'edited'."""
    return hashlib.sha256(b"model-gateway audit key\n" + key).hexdigest()[:16]


def checkpoints_path(path: Path) -> Path:
    return path.with_name(path.stem + ".checkpoints.jsonl")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def rotated_name(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index:0{SEGMENT_DIGITS}d}")


def segment_files(path: Path) -> list[tuple[int, Path]]:
    """Rotated segments in rotation order, then the active file (index = rotations + 1)."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d{" + str(SEGMENT_DIGITS) + r"})$")
    rotated = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.match(p.name)
            if m:
                rotated.append((int(m.group(1)), p))
    rotated.sort()
    active = (rotated[-1][0] + 1) if rotated else 1
    return [*rotated, (active, path)]


# --- reading records ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    prev: str
    mac: str
    event: str | None
    authentic: bool


def parse_record(line: bytes, key: bytes | None) -> Record | None:
    """A record line -> Record (its MAC checked when `key` is given); None when it is not a record at all.

    The one parser of record lines, for the writers and the verifier alike.
    """
    try:
        rec = orjson.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict):
        return None
    seq, prev, mac = rec.get("seq"), rec.get("prev"), rec.get("mac")
    if type(seq) is not int or not isinstance(prev, str) or not isinstance(mac, str):
        return None
    event = rec.get("event")
    authentic = key is not None and _authentic(line, rec, key, prev, mac)
    return Record(seq, prev, mac, event if isinstance(event, str) else None, authentic)


def _authentic(line: bytes, rec: dict[str, Any], key: bytes, prev: str, mac: str) -> bool:
    # A line as a writer wrote it ends with `,"prev":"…","mac":"…"}` after the canonical record, so the
    # MAC can be checked over the bytes as they are; anything else is re-canonicalised first.
    ending = f',"prev":"{prev}","mac":"{mac}"}}'.encode()
    if line.endswith(ending) and hmac.compare_digest(mac_of(key, prev, line[: -len(ending)] + b"}"), mac):
        return True
    body = {k: v for k, v in rec.items() if k not in ("prev", "mac")}
    return hmac.compare_digest(record_mac(key, prev, body), mac)


@dataclass(frozen=True, slots=True)
class Tail:
    """The end of a JSONL file: its last complete line (None if none) and the torn bytes after it."""

    line: bytes | None
    line_start: int
    torn: int


def read_tail(fd: int, size: int) -> Tail:
    # one read covers the last line in the common case (records are far shorter than a chunk)
    begin = max(0, size - _CHUNK)
    chunk = os.pread(fd, size - begin, begin) if size else b""
    end = chunk.rfind(b"\n")
    if end >= 0:
        start = chunk.rfind(b"\n", 0, end)
        if start >= 0 or begin == 0:
            return Tail(chunk[start + 1 : end], begin + start + 1, len(chunk) - end - 1)
    end = _rfind_newline(fd, size)
    if end < 0:
        return Tail(None, 0, size)
    start = _rfind_newline(fd, end) + 1
    return Tail(os.pread(fd, end - start, start), start, size - end - 1)


def lines_backwards(fd: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each complete line before `end` (a newline's offset + 1), last first."""
    stop = end - 1
    while stop >= 0:
        start = _rfind_newline(fd, stop) + 1
        yield start, os.pread(fd, stop - start, start)
        stop = start - 1


def _rfind_newline(fd: int, end: int) -> int:
    """Offset of the last newline before `end`, or -1; reads backwards in growing chunks."""
    pos, chunk = end, _CHUNK
    while pos > 0:
        begin = max(0, pos - chunk)
        found = os.pread(fd, pos - begin, begin).rfind(b"\n")
        if found >= 0:
            return begin + found
        pos, chunk = begin, min(chunk * 4, 1 << 20)
    return -1
