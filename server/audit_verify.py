"""Check an audit trail end to end: every segment's chain, the checkpoints, and the cut between them.

`verify(path, key)` reports the first bad record and the kind of damage:

    torn               the last line of the active file is incomplete (a crash mid-write; `repair` cuts it)
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
"""

from __future__ import annotations

import hmac
import itertools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.audit import (
    GENESIS,
    checkpoint_mac,
    checkpoints_path,
    key_id,
    load_or_create_key,
    record_mac,
    segment_files,
)
from server.errors import ConfigError


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
    damage: Damage | None
    repaired_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.damage is None


@dataclass(frozen=True, slots=True)
class _Rec:
    seq: int
    prev: str
    mac: str
    authentic: bool
    segment: int
    file: str
    line: int


class _Found(Exception):
    def __init__(self, damage: Damage) -> None:
        self.damage = damage


def _lines(path: Path, last_file: bool) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, complete) for each line; only the active file may end torn."""
    data = path.read_bytes()
    parts = data.split(b"\n")
    for n, raw in enumerate(parts[:-1], start=1):
        yield n, raw, True
    if parts[-1]:
        if not last_file:
            raise _Found(Damage("corrupt", path.name, len(parts), None, "a rotated file ends mid-record"))
        yield len(parts), parts[-1], False


def _parse(raw: bytes, path: Path, n: int, complete: bool) -> dict[str, Any]:
    try:
        rec = json.loads(raw)
        if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int):
            raise ValueError("not a record")
        if not isinstance(rec.get("prev"), str) or not isinstance(rec.get("mac"), str):
            raise KeyError("prev/mac")
        return rec
    except (ValueError, KeyError) as exc:
        kind = "torn" if not complete else "corrupt"
        raise _Found(Damage(kind, path.name, n, None, f"unreadable record ({type(exc).__name__})")) from exc


def _read_records(path: Path, key: bytes) -> tuple[list[_Rec], int]:
    segments = segment_files(path)
    indices = [i for i, _ in segments]
    for a, b in itertools.pairwise(indices):
        if b != a + 1:
            raise _Found(Damage("segment-order", path.name, 0, None, f"rotated file {a + 1} is missing"))
    recs: list[_Rec] = []
    for pos, (index, seg) in enumerate(segments):
        if not seg.exists():
            continue
        for n, raw, complete in _lines(seg, pos == len(segments) - 1):
            rec = _parse(raw, seg, n, complete)
            body = {k: v for k, v in rec.items() if k not in ("prev", "mac")}
            authentic = hmac.compare_digest(record_mac(key, str(rec["prev"]), body), str(rec["mac"]))
            recs.append(_Rec(rec["seq"], str(rec["prev"]), str(rec["mac"]), authentic, index, seg.name, n))
    return recs, len(segments)


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


def _walk(recs: list[_Rec]) -> None:
    prev: _Rec | None = None
    for i, r in enumerate(recs):
        if prev is None and (r.seq != 1 or r.prev != GENESIS) and r.authentic:
            raise _Found(Damage("head-missing", r.file, r.line, r.seq, f"records before seq {r.seq} are gone"))
        if not r.authentic:
            nxt = recs[i + 1] if i + 1 < len(recs) else None
            skipped = nxt is not None and prev is not None and nxt.prev == prev.mac and nxt.seq == prev.seq + 1
            kind = "inserted" if skipped else "edited"
            raise _Found(Damage(kind, r.file, r.line, r.seq, "content does not match its MAC"))
        linked = r.prev == (prev.mac if prev else GENESIS) and r.seq == (prev.seq + 1 if prev else 1)
        if not linked:
            raise _Found(_chain_break(recs, i, prev))
        prev = r


def _read_checkpoints(path: Path, key: bytes) -> list[dict[str, Any]]:
    cp_path = checkpoints_path(path)
    if not cp_path.exists():
        return []
    cps: list[dict[str, Any]] = []
    prev, want = GENESIS, key_id(key)
    for n, raw, complete in _lines(cp_path, True):
        try:
            cp = json.loads(raw)
            body = {k: cp[k] for k in cp if k not in ("prev", "cmac")}
            good = hmac.compare_digest(checkpoint_mac(key, str(cp["prev"]), body), str(cp["cmac"]))
        except (ValueError, KeyError, TypeError) as exc:
            kind = "torn" if not complete else "checkpoint-edited"
            raise _Found(Damage(kind, cp_path.name, n, None, "unreadable checkpoint")) from exc
        if cp.get("key_id") != want:
            raise _Found(Damage("wrong-key", cp_path.name, n, None, "written with a different audit key"))
        if not good:
            raise _Found(Damage("checkpoint-edited", cp_path.name, n, None, "checkpoint does not match its MAC"))
        if cp["prev"] != prev or cp["n"] != len(cps) + 1:
            raise _Found(Damage("checkpoint-deleted", cp_path.name, n, None, "checkpoints are missing or reordered"))
        prev = str(cp["cmac"])
        cps.append(cp)
    return cps


def _match_checkpoints(recs: list[_Rec], cps: list[dict[str, Any]], cp_name: str) -> None:
    if recs and not cps:
        raise _Found(Damage("checkpoint-missing", cp_name, 0, None, "the log has records but no signed checkpoint"))
    by_seq = {r.seq: r for r in recs}
    last = recs[-1].seq if recs else 0
    first = recs[0].seq if recs else 1
    for n, cp in enumerate(cps, start=1):
        seq = int(cp["seq"])
        if seq > last:
            detail = f"checkpoint {n} signs seq {seq} but the log ends at seq {last}"
            tail = recs[-1] if recs else None
            raise _Found(Damage("truncated", tail.file if tail else cp_name, tail.line if tail else 0, last, detail))
        rec = by_seq.get(seq)
        if rec is None and seq >= first:
            raise _Found(Damage("deleted", cp_name, n, seq, f"checkpoint {n} signs seq {seq}, absent from the log"))
        if rec is not None and rec.mac != cp["mac"]:
            raise _Found(Damage("edited", rec.file, rec.line, seq, f"record differs from checkpoint {n}"))
        if rec is not None and rec.segment != cp["segment"]:
            detail = f"checkpoint {n} places seq {seq} in rotated file {cp['segment']}"
            raise _Found(Damage("segment-order", rec.file, rec.line, seq, detail))


def _cut_torn_tail(path: Path) -> int:
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as fh:
        fh.truncate(keep)
        os.fsync(fh.fileno())
    return len(data) - keep


def verify(path: Path, key: bytes, *, repair: bool = False) -> VerifyReport:
    """Check the log at `path` (the active file or its folder); with `repair`, cut a torn last line first."""
    if path.is_dir():
        path = path / "audit.jsonl"
    if not any(p.exists() for _, p in segment_files(path)):
        raise FileNotFoundError(f"no audit log at {path}")
    repaired = 0
    recs: list[_Rec] = []
    cps: list[dict[str, Any]] = []
    segments = 0
    try:
        cps = _read_checkpoints(path, key)
        recs, segments = _read_records(path, key)
        _walk(recs)
        _match_checkpoints(recs, cps, checkpoints_path(path).name)
    except _Found as found:
        if repair and found.damage.kind == "torn":
            torn_file = path.with_name(found.damage.file)
            repaired = _cut_torn_tail(torn_file)
            again = verify(path, key, repair=True)
            total = repaired + again.repaired_bytes
            return VerifyReport(again.records, again.segments, again.checkpoints, again.damage, total)
        return VerifyReport(len(recs), segments, len(cps), found.damage)
    return VerifyReport(len(recs), segments, len(cps), None, repaired)


def verifier_key(log_path: Path, key_file: Path | None, env: Mapping[str, str]) -> bytes:
    """--key-file, else MODEL_GATEWAY_AUDIT_KEY, else MODEL_GATEWAY_AUDIT_KEY_FILE, else audit.key beside the log."""
    folder = log_path if log_path.is_dir() else log_path.parent
    candidates = [
        key_file,
        Path(env["MODEL_GATEWAY_AUDIT_KEY_FILE"]) if env.get("MODEL_GATEWAY_AUDIT_KEY_FILE") else None,
    ]
    if key_file is None and env.get("MODEL_GATEWAY_AUDIT_KEY"):
        return load_or_create_key(env["MODEL_GATEWAY_AUDIT_KEY"], folder / "audit.key")
    for path in [*candidates, folder / "audit.key"]:
        if path is not None and path.is_file():
            return load_or_create_key(path.read_text(encoding="ascii").strip(), path)
    raise ConfigError("no audit key: pass --key-file or set MODEL_GATEWAY_AUDIT_KEY")


def verify_command(
    path: Path, key_file: Path | None, repair: bool, env: Mapping[str, str]
) -> tuple[VerifyReport, dict[str, Any]]:
    if not path.exists() and not any(p.exists() for _, p in segment_files(path)):
        raise ConfigError(f"{path}: no audit log there")
    report = verify(path, verifier_key(path, key_file, env), repair=repair)
    fixed = f"; cut a torn last line ({report.repaired_bytes} bytes)" if report.repaired_bytes else ""
    if report.ok:
        summary = f"ok: {report.records} records in {report.segments} file(s), {report.checkpoints} checkpoints{fixed}"
    else:
        summary = f"DAMAGED: {report.damage}{fixed}"
    damage = (
        None
        if report.damage is None
        else {
            "kind": report.damage.kind,
            "file": report.damage.file,
            "line": report.damage.line,
            "seq": report.damage.seq,
            "detail": report.damage.detail,
        }
    )
    return report, {
        "ok": report.ok,
        "summary": summary,
        "records": report.records,
        "damage": damage,
        "repaired_bytes": report.repaired_bytes,
    }
