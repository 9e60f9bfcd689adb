"""Where an audit trail ends: what the next record and the next checkpoint link to.

A writer reads this with the trail's lock held, at start and whenever another
process has written since, so its `seq` and `prev` always come from the file.
Torn bytes after the last newline were never acknowledged and are cut; a last
line that cannot be linked to (unreadable, or not signed by the key) is left in
place and marks the trail as damaged: the writer then starts a new link with a
`restart` record (or a `restart` checkpoint), numbered after the last line it
could read, so the verifier can report the damage and check the trail on.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from server.audit_chain import GENESIS, checkpoint_mac, lines_backwards, parse_record, read_tail, rotated_name
from server.statefile import warn_once

_LOG = "model_gateway.audit"
ROTATE = "rotate"  # the event of the last record of a file that was rotated
_SCAN_LINES = 100_000  # how far back a damaged tail is searched for the last line that links


@dataclass(frozen=True, slots=True)
class ChainEnd:
    seq: int  # the next record gets seq + 1
    mac: str  # ... and links to this (GENESIS when a restart is due)
    size: int  # of the active file, torn bytes cut
    torn: int
    damaged: str | None = None  # why the last line cannot be linked to: a restart is due
    last_good: int | None = None  # seq of the last record that could be linked to
    sealed: bool = False  # the file's last record is a rotation seal: the trail goes on in a new active file
    event: str | None = None  # of the last record


@dataclass(frozen=True, slots=True)
class CheckpointEnd:
    n: int
    cmac: str
    seq: int
    size: int
    restart: bool  # the last checkpoint line cannot be linked to: the next one starts a new link


def open_append(path: Path) -> int:
    """A trail file for appending and reading back, 0600 and ours (a link is followed: the folder is private)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    try:
        st = os.fstat(fd)
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            raise OSError(22, "not a file", str(path))
        if stat.S_ISREG(st.st_mode):
            _make_ours(fd, st, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_ours(fd: int, st: os.stat_result, path: Path) -> None:
    if st.st_uid != os.geteuid():
        action = "taken over (its records are checked by their MACs, not by owner)"
        try:
            os.fchown(fd, os.geteuid(), os.getegid())
        except OSError:
            action = "left as it is (its owner cannot be changed)"
        warn_once(_LOG, path, f"owned by uid {st.st_uid}", action)
    if st.st_mode & 0o077:
        os.fchmod(fd, 0o600)
        warn_once(_LOG, path, f"mode {stat.S_IMODE(st.st_mode):04o}", "closed to 0600")


def read_chain_end(fd: int, size: int, path: Path, segment: int, key: bytes) -> ChainEnd:
    tail = read_tail(fd, size)
    if tail.torn:
        os.ftruncate(fd, size - tail.torn)
        os.fsync(fd)
        size -= tail.torn
    if tail.line is not None:
        end = _linkable(fd, size, key, size, tail.torn)
        return replace(end, sealed=True) if end.damaged is None and end.event == ROTATE else end
    if segment > 1:
        # an empty active file right after a rotation continues the rotated one
        with contextlib.suppress(FileNotFoundError):
            prev_fd = os.open(rotated_name(path, segment - 1), os.O_RDONLY | os.O_CLOEXEC)
            try:
                prev_size = os.fstat(prev_fd).st_size
                prev = read_tail(prev_fd, prev_size)
                if prev.line is not None:
                    return _linkable(prev_fd, prev_size - prev.torn, key, size, tail.torn)
            finally:
                os.close(prev_fd)
    return ChainEnd(0, GENESIS, size, tail.torn)


def _linkable(fd: int, end: int, key: bytes, size: int, torn: int) -> ChainEnd:
    """The last record before `end` if it is authentic; else the damage and the last one that is."""
    skipped = 0
    for _, line in lines_backwards(fd, end):
        rec = parse_record(line, key)
        if rec is not None and rec.authentic:
            if not skipped:
                return ChainEnd(rec.seq, rec.mac, size, torn, event=rec.event)
            return ChainEnd(rec.seq + skipped, GENESIS, size, torn, _why(skipped), rec.seq)
        skipped += 1
        if skipped >= _SCAN_LINES:
            break
    return ChainEnd(skipped, GENESIS, size, torn, _why(skipped), None)


def _why(skipped: int) -> str:
    return f"the last {skipped} line(s) cannot be linked to (unreadable or not signed with this key)"


def read_checkpoint_end(fd: int, size: int, key: bytes) -> CheckpointEnd:
    tail = read_tail(fd, size)
    if tail.torn:
        os.ftruncate(fd, size - tail.torn)
        os.fsync(fd)
        size -= tail.torn
    if tail.line is None:
        return CheckpointEnd(0, GENESIS, 0, size, False)
    skipped = 0
    for _, line in lines_backwards(fd, size):
        cp = _checkpoint(line, key)
        if cp is not None:
            n, cmac, seq = cp
            return CheckpointEnd(n + skipped, cmac, seq, size, skipped > 0)
        skipped += 1
        if skipped >= _SCAN_LINES:
            break
    return CheckpointEnd(skipped, GENESIS, 0, size, True)


def _checkpoint(line: bytes, key: bytes) -> tuple[int, str, int] | None:
    """(n, cmac, seq) of an authentic checkpoint line, else None."""
    try:
        cp = json.loads(line)
        body = {k: v for k, v in cp.items() if k not in ("prev", "cmac")}
        if not hmac.compare_digest(checkpoint_mac(key, str(cp["prev"]), body), str(cp["cmac"])):
            return None
        n, seq = cp["n"], cp["seq"]
        return (n, str(cp["cmac"]), seq) if type(n) is int and type(seq) is int else None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
