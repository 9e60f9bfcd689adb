"""Check one audit trail end to end: every segment's chain, the checkpoints, and the cut between them.

`verify(path, key)` reports every damaged place (the first one first) and the kind of damage:

    torn               the last line of a file is incomplete (a crash mid-write; `repair` cuts it)
    corrupt            a line that is not a JSON record
    edited             a record's content no longer matches its MAC
    inserted           a record that does not belong in the chain here (forged or replayed)
    deleted            records are missing from the middle of the chain
    reordered          records are present but out of order
    segment-order      a rotated file is missing, swapped or replaced
    head-missing       the chain does not start at the first record
    truncated          the log ends before a signed checkpoint says it reached
    checkpoint-*       the checkpoint file itself was edited, cut or removed
    wrong-key          the log was written with a different key

After a damaged place the check goes on from the next authentic record, so one
report lists each place and says from which seq the trail verifies to its end.
A `restart` record (keyed, linked to nothing) is where a writer went on after
damage it found; it is a valid start of a new link, not damage itself.
The files are read up to the sizes they had under the trail's lock, so a check
of a live trail never mistakes an append in progress for a torn line.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.audit_chain import GENESIS, checkpoint_mac, checkpoints_path, key_id, lock_path, parse_record, segment_files
from server.statefile import try_lock, unlock

MAX_REPORTED = 50
LOCK_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Damage:
    kind: str
    file: str
    line: int
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" + (f" (seq {self.seq})" if self.seq is not None else "")
        return f"{self.kind} at {where}: {self.detail}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    records: int
    segments: int
    checkpoints: int
    damages: tuple[Damage, ...] = ()
    repaired_bytes: int = 0
    more: int = 0  # damaged places found beyond the reported ones
    resumes_at: int | None = None  # after the last damage, the trail verifies from this seq to its end

    @property
    def damage(self) -> Damage | None:
        return self.damages[0] if self.damages else None

    @property
    def ok(self) -> bool:
        return not self.damages


@dataclass
class _Findings:
    items: list[Damage] = field(default_factory=list)
    seen: set[tuple[str, int]] = field(default_factory=set)
    more: int = 0

    def add(self, damage: Damage) -> None:
        where = (damage.file, damage.line)
        if damage.line and where in self.seen:
            return  # one place, one report
        self.seen.add(where)
        if len(self.items) < MAX_REPORTED:
            self.items.append(damage)
        else:
            self.more += 1


@dataclass(frozen=True, slots=True)
class _Rec:
    seq: int
    prev: str
    mac: str
    authentic: bool
    restart: bool
    segment: int
    file: str
    line: int
    readable: bool = True  # False: a line that is no record at all (reported when read), kept for its place


class _WrongKey(Exception):
    def __init__(self, damage: Damage) -> None:
        self.damage = damage


# --- reading the files ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Snapshot:
    segments: list[tuple[int, Path, bytes | None]]
    checkpoints: bytes | None


def _snapshot(path: Path) -> _Snapshot:
    """Every file's bytes up to its size under the lock (when a lock file is there and can be taken)."""
    opened: list[tuple[int, Path, int | None]] = []
    cp_fd: int | None = None
    try:
        with _lock_if_present(path):
            for index, p in segment_files(path):
                opened.append((index, p, _open_ro(p)))
            cp_fd = _open_ro(checkpoints_path(path))
            sizes = [os.fstat(fd).st_size if fd is not None else 0 for _, _, fd in opened]
            cp_size = os.fstat(cp_fd).st_size if cp_fd is not None else 0
        segments = [(i, p, _read(fd, size)) for (i, p, fd), size in zip(opened, sizes, strict=True)]
        return _Snapshot(segments, _read(cp_fd, cp_size))
    finally:
        for fd in [fd for _, _, fd in opened] + [cp_fd]:
            if fd is not None:
                os.close(fd)


@contextlib.contextmanager
def _lock_if_present(path: Path) -> Iterator[None]:
    """The trail's lock when a writer has made one (a read-only copy has none); a stuck holder is waited 5 s for."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        yield
        return
    locked = False
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while not (locked := try_lock(fd)) and time.monotonic() < deadline:
            time.sleep(0.005)
        yield  # unlocked after the wait: read anyway (an append in progress may then look torn)
    finally:
        if locked:
            unlock(fd)
        os.close(fd)


def _open_ro(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _read(fd: int | None, size: int) -> bytes | None:
    if fd is None:
        return None
    chunks, offset = [], 0
    while offset < size and (chunk := os.pread(fd, min(size - offset, 1 << 24), offset)):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _lines(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, complete) for each line."""
    parts = data.split(b"\n")
    for n, raw in enumerate(parts[:-1], start=1):
        yield n, raw, True
    if parts[-1]:
        yield len(parts), parts[-1], False


def _read_records(snap: _Snapshot, key: bytes, found: _Findings) -> list[_Rec]:
    indices = [i for i, _, _ in snap.segments]
    for a, b in itertools.pairwise(indices):
        if b != a + 1:
            name = snap.segments[-1][1].name
            found.add(Damage("segment-order", name, 0, None, f"rotated file {a + 1} is missing"))
    recs: list[_Rec] = []
    for pos, (index, seg, data) in enumerate(snap.segments):
        for n, raw, complete in _lines(data or b""):
            rec = parse_record(raw, key) if complete else None
            if rec is None:
                if not complete and pos < len(snap.segments) - 1:
                    found.add(Damage("corrupt", seg.name, n, None, "a rotated file ends mid-record"))
                else:
                    kind = "torn" if not complete else "corrupt"
                    found.add(Damage(kind, seg.name, n, None, "unreadable record"))
                recs.append(_Rec(-1, "", "", False, False, index, seg.name, n, readable=False))
                continue
            restart = rec.authentic and rec.event == "restart" and rec.prev == GENESIS
            recs.append(_Rec(rec.seq, rec.prev, rec.mac, rec.authentic, restart, index, seg.name, n))
    return recs


# --- the record chain ----------------------------------------------------------------


def _chain_break(recs: list[_Rec], i: int, prev: _Rec | None) -> Damage:
    r = recs[i]
    expected = prev.seq + 1 if prev else 1
    at_boundary = prev is not None and r.segment != prev.segment
    later = {x.seq for x in recs[i + 1 :]}
    if r.seq > expected and expected not in later:
        return Damage("deleted", r.file, r.line, r.seq, f"records {expected}..{r.seq - 1} are missing")
    if at_boundary:
        detail = f"{r.file} does not continue {prev.file if prev else 'the chain'}"
        return Damage("segment-order", r.file, r.line, r.seq, detail + ": a rotated file was swapped or replaced")
    if r.seq > expected:
        return Damage("reordered", r.file, r.line, r.seq, f"seq {r.seq} appears before seq {expected}")
    if r.seq < expected and expected in later:
        return Damage("reordered", r.file, r.line, r.seq, f"seq {r.seq} appears after seq {expected - 1}")
    return Damage("inserted", r.file, r.line, r.seq, "a record that does not link to the one before it")


def _walk(recs: list[_Rec], found: _Findings) -> int | None:
    """Check every link; after a damaged place, go on from the next authentic record. Returns resumes_at."""
    prev: _Rec | None = None
    resync = False
    resumes_at: int | None = None
    for i, r in enumerate(recs):
        damage = _link_damage(recs, i, prev, resync) if r.readable else None
        if damage is not None:
            found.add(damage)
        if not r.readable or damage is not None:  # an unreadable line was reported when it was read
            resync, resumes_at = True, None
            continue
        if resumes_at is None:
            resumes_at = r.seq
        prev, resync = r, False
    return resumes_at


def _link_damage(recs: list[_Rec], i: int, prev: _Rec | None, resync: bool) -> Damage | None:
    """What is wrong with record i's place after `prev`, the last good record (None: nothing)."""
    r = recs[i]
    if not r.authentic:
        return _unauthentic(recs, i, prev)
    if r.restart:
        if prev is not None and r.seq <= prev.seq:
            return Damage("reordered", r.file, r.line, r.seq, f"a restart numbered {r.seq} follows seq {prev.seq}")
        return None
    if resync:
        return None  # the first authentic record after damage: its link points into the damage
    if prev is None and (r.seq != 1 or r.prev != GENESIS):
        return Damage("head-missing", r.file, r.line, r.seq, f"records before seq {r.seq} are gone")
    if not (r.prev == (prev.mac if prev else GENESIS) and r.seq == (prev.seq + 1 if prev else 1)):
        return _chain_break(recs, i, prev)
    return None


def _unauthentic(recs: list[_Rec], i: int, prev: _Rec | None) -> Damage:
    """A record whose MAC fails: inserted when the chain runs on around it, edited when it takes its place."""
    r = recs[i]
    nxt = recs[i + 1] if i + 1 < len(recs) else None
    skipped = nxt is not None and prev is not None and nxt.prev == prev.mac and nxt.seq == prev.seq + 1
    kind = "inserted" if skipped else "edited"
    return Damage(kind, r.file, r.line, r.seq, "content does not match its MAC")


# --- checkpoints -------------------------------------------------------------------------


def _read_checkpoints(snap: _Snapshot, cp_name: str, key: bytes, found: _Findings) -> list[dict[str, Any]]:
    cps: list[dict[str, Any]] = []
    prev: str | None = GENESIS
    want = key_id(key)
    for n, raw, complete in _lines(snap.checkpoints or b""):
        try:
            cp = json.loads(raw)
            body = {k: cp[k] for k in cp if k not in ("prev", "cmac")}
            good = hmac.compare_digest(checkpoint_mac(key, str(cp["prev"]), body), str(cp["cmac"]))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            kind = "torn" if not complete else "checkpoint-edited"
            found.add(Damage(kind, cp_name, n, None, "unreadable checkpoint"))
            prev = None
            continue
        if cp.get("key_id") != want and not cps:
            raise _WrongKey(Damage("wrong-key", cp_name, n, None, "written with a different audit key"))
        if not good:
            found.add(Damage("checkpoint-edited", cp_name, n, None, "checkpoint does not match its MAC"))
            prev = None
            continue
        head = cp.get("restart") is True and cp["prev"] == GENESIS
        if prev is not None and not head and (cp["prev"] != prev or cp.get("n") != len(cps) + 1):
            found.add(Damage("checkpoint-deleted", cp_name, n, None, "checkpoints are missing or reordered"))
        prev = str(cp["cmac"])
        cps.append({**cp, "line": n})
    return cps


def _match_checkpoints(recs: list[_Rec], cps: list[dict[str, Any]], cp_name: str, found: _Findings) -> None:
    if recs and not cps:
        found.add(Damage("checkpoint-missing", cp_name, 0, None, "the log has records but no signed checkpoint"))
    recs = [r for r in recs if r.readable]
    by_seq = {r.seq: r for r in recs if r.authentic}
    damaged = {r.seq: r for r in recs if not r.authentic}
    last = max((r.seq for r in recs if r.authentic), default=0)
    first = recs[0].seq if recs else 1
    for n, cp in enumerate(cps, start=1):
        seq = cp.get("seq")
        if type(seq) is not int:
            continue
        if seq > last:
            detail = f"checkpoint {n} signs seq {seq} but the log ends at seq {last}"
            tail = recs[-1] if recs else None
            found.add(Damage("truncated", tail.file if tail else cp_name, tail.line if tail else 0, last, detail))
            return
        rec = by_seq.get(seq)
        if rec is None and seq in damaged:
            bad = damaged[seq]  # already reported by the walk: the same place, not a second damage
            found.add(Damage("edited", bad.file, bad.line, seq, f"record differs from checkpoint {n}"))
        elif rec is None and seq >= first:
            detail = f"checkpoint {n} signs seq {seq}, absent from the log"
            found.add(Damage("deleted", cp_name, cp["line"], seq, detail))
        elif rec is not None and rec.mac != cp.get("mac"):
            found.add(Damage("edited", rec.file, rec.line, seq, f"record differs from checkpoint {n}"))
        elif rec is not None and rec.segment != cp.get("segment"):
            detail = f"checkpoint {n} places seq {seq} in rotated file {cp.get('segment')}"
            found.add(Damage("segment-order", rec.file, rec.line, seq, detail))


# --- the whole trail ------------------------------------------------------------------------


def _cut_torn_tails(path: Path) -> int:
    """With the lock held (when there is one): cut torn last lines of the active and checkpoint files."""
    cut = 0
    with _lock_if_present(path):
        for p in (path, checkpoints_path(path)):
            with contextlib.suppress(FileNotFoundError), p.open("r+b") as fh:
                data = fh.read()
                keep = data.rfind(b"\n") + 1
                if keep < len(data):
                    fh.truncate(keep)
                    os.fsync(fh.fileno())
                    cut += len(data) - keep
    return cut


def verify(path: Path, key: bytes, *, repair: bool = False) -> VerifyReport:
    """Check the trail whose active file is `path` (or `path`/audit.jsonl); `repair` cuts torn last lines first."""
    if path.is_dir():
        path = path / "audit.jsonl"
    if not any(p.exists() for _, p in segment_files(path)):
        raise FileNotFoundError(f"no audit log at {path}")
    repaired = _cut_torn_tails(path) if repair else 0
    snap = _snapshot(path)
    found = _Findings()
    cp_name = checkpoints_path(path).name
    try:
        cps = _read_checkpoints(snap, cp_name, key, found)
    except _WrongKey as wrong:
        return VerifyReport(0, len(snap.segments), 0, (wrong.damage,), repaired)
    recs = _read_records(snap, key, found)
    resumes_at = _walk(recs, found)
    _match_checkpoints(recs, cps, cp_name, found)
    count = sum(r.readable for r in recs)
    return VerifyReport(count, len(snap.segments), len(cps), tuple(found.items), repaired, found.more, resumes_at)
