"""The tamper matrix: every kind of damage, at random positions, is detected every time."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from server.audit import AuditLog, AuditOptions, canonical, checkpoints_path, segment_files
from server.audit_verify import verify

KEY = bytes(range(32))
TRIALS = 40


async def _fill(path: Path, n: int) -> None:
    log = AuditLog(path, KEY, AuditOptions(fsync="never", max_file_bytes=4096, checkpoint_every=7))
    for i in range(n):
        await log.write({"event": "start", "call_id": f"c{i}", "tool": "embed", "principal": "alice"})
    await log.aclose()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    anyio.run(_fill, root / "audit.jsonl", 120)
    assert len(segment_files(root / "audit.jsonl")) >= 4  # rotation happened several times
    return root


def _copy(pristine: Path, tmp: Path, n: int) -> Path:
    dest = tmp / f"t{n}"
    shutil.copytree(pristine, dest)
    return dest / "audit.jsonl"


def _all_lines(log: Path) -> list[tuple[Path, int]]:
    return [(p, i) for _, p in segment_files(log) for i in range(len(p.read_bytes().splitlines()))]


def _rewrite(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(x + b"\n" for x in change(lines)))


def edit(log: Path, rng: random.Random) -> None:
    path, i = rng.choice(_all_lines(log))

    def change(lines: list[bytes]) -> list[bytes]:
        rec = json.loads(lines[i])
        rec[rng.choice(["tool", "principal", "call_id", "ts", "seq"])] = rng.choice(["chat", "mallory", 7])
        lines[i] = canonical(rec)
        return lines

    _rewrite(path, change)


def delete(log: Path, rng: random.Random) -> None:
    path, i = rng.choice(_all_lines(log))
    _rewrite(path, lambda lines: lines[:i] + lines[i + 1 :])


def insert_replay(log: Path, rng: random.Random) -> None:
    (src, i), (dst, j) = rng.choice(_all_lines(log)), rng.choice(_all_lines(log))
    copied = src.read_bytes().splitlines()[i]
    _rewrite(dst, lambda lines: [*lines[:j], copied, *lines[j:]])


def insert_forged(log: Path, rng: random.Random) -> None:
    path, j = rng.choice(_all_lines(log))

    def change(lines: list[bytes]) -> list[bytes]:
        base = json.loads(lines[max(0, j - 1)])
        forged = {**base, "seq": base["seq"] + 1, "prev": base["mac"], "tool": "exfiltrate"}
        forged["mac"] = hashlib.sha256(canonical(forged)).hexdigest()
        return [*lines[:j], canonical(forged), *lines[j:]]

    _rewrite(path, change)


def reorder(log: Path, rng: random.Random) -> None:
    path = rng.choice([p for _, p in segment_files(log)])

    def change(lines: list[bytes]) -> list[bytes]:
        i, j = rng.sample(range(len(lines)), 2)
        lines[i], lines[j] = lines[j], lines[i]
        return lines

    _rewrite(path, change)


def truncate_tail(log: Path, rng: random.Random) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    keep = rng.randrange(0, len(lines))
    log.write_bytes(b"".join(lines[:keep]))
    if keep == 0 and rng.random() < 0.5:
        log.unlink()  # the whole active file gone too


def swap_rotated(log: Path, rng: random.Random) -> None:
    files = [p for _, p in segment_files(log)]
    a, b = rng.sample(files, 2)
    tmp = a.with_name("swap.tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def drop_rotated(log: Path, rng: random.Random) -> None:
    rng.choice([p for _, p in segment_files(log)[:-1]]).unlink()


def rewrite_and_rehash(log: Path, rng: random.Random) -> None:
    """Edit one record, then re-chain everything after it with a guessed key, as a plain hash chain allows."""
    files = [p for _, p in segment_files(log)]
    records = [(p, json.loads(x)) for p in files for x in p.read_bytes().splitlines()]
    start = rng.randrange(len(records))
    records[start][1]["principal"] = "mallory"
    prev = records[start - 1][1]["mac"] if start else "0" * 64
    guess = rng.choice([b"", bytes(32), b"model-gateway"])
    for _, rec in records[start:]:
        rec["prev"] = prev
        body = {k: v for k, v in rec.items() if k not in ("prev", "mac")}
        rec["mac"] = prev = hmac.new(guess, prev.encode() + b"\n" + canonical(body), hashlib.sha256).hexdigest()
    for p in files:
        p.write_bytes(b"".join(canonical(r) + b"\n" for q, r in records if q == p))


def checkpoint_damage(log: Path, rng: random.Random) -> None:
    cp = checkpoints_path(log)
    lines = cp.read_bytes().splitlines()
    i = rng.randrange(len(lines))
    how = rng.choice(["edit", "delete", "drop-file"])
    if how == "drop-file":
        cp.unlink()
        return
    if how == "delete":
        del lines[i]
    else:
        rec = json.loads(lines[i])
        rec["seq"] = rec["seq"] + rng.choice([-1, 1])
        lines[i] = canonical(rec)
    cp.write_bytes(b"".join(x + b"\n" for x in lines))


DAMAGE = {
    edit: {"edited", "corrupt"},
    delete: {"deleted", "truncated", "head-missing", "checkpoint-missing"},
    insert_replay: {"inserted", "reordered", "segment-order"},
    insert_forged: {"edited", "inserted"},
    reorder: {"reordered", "head-missing", "segment-order"},
    truncate_tail: {"truncated"},
    swap_rotated: {"segment-order", "head-missing", "reordered", "deleted"},
    drop_rotated: {"segment-order", "head-missing", "deleted"},
    rewrite_and_rehash: {"edited"},
    checkpoint_damage: {"checkpoint-edited", "checkpoint-deleted", "checkpoint-missing"},
}


def test_the_untouched_log_verifies_across_rotated_files(pristine: Path) -> None:
    report = verify(pristine / "audit.jsonl", KEY)
    assert report.ok, report.damage
    assert report.records == 120 + report.segments - 1  # each rotated file ends with its seal
    assert report.segments >= 4 and report.checkpoints >= 120 // 7


@pytest.mark.parametrize("damage", list(DAMAGE), ids=lambda f: f.__name__)
def test_each_kind_of_damage_at_random_positions_is_detected_every_time(
    damage: Callable[[Path, random.Random], None], pristine: Path, tmp_path: Path
) -> None:
    rng = random.Random(damage.__name__)
    kinds: set[str] = set()
    for n in range(TRIALS):
        log = _copy(pristine, tmp_path, n)
        damage(log, rng)
        report = verify(log, KEY)
        assert report.damage is not None, f"trial {n}: {damage.__name__} went unnoticed"
        kinds.add(report.damage.kind)
        shutil.rmtree(log.parent)
    assert kinds <= DAMAGE[damage], kinds


def test_a_log_checked_with_another_key_says_wrong_key(pristine: Path) -> None:
    report = verify(pristine / "audit.jsonl", b"k" * 32)
    assert report.damage is not None and report.damage.kind == "wrong-key"


def test_a_torn_last_line_is_reported_then_cut_by_repair(pristine: Path, tmp_path: Path) -> None:
    log = _copy(pristine, tmp_path, 0)
    with log.open("ab") as fh:
        fh.write(b'{"seq": 121, "event": "sta')
    torn = verify(log, KEY)
    assert torn.damage is not None and torn.damage.kind == "torn"
    fixed = verify(log, KEY, repair=True)
    assert fixed.ok and fixed.repaired_bytes == len(b'{"seq": 121, "event": "sta')
    assert verify(log, KEY).ok


def test_repair_does_not_hide_other_damage(pristine: Path, tmp_path: Path) -> None:
    log = _copy(pristine, tmp_path, 0)
    delete(log, random.Random(3))
    report = verify(log, KEY, repair=True)
    assert not report.ok and report.repaired_bytes == 0


def test_every_damaged_place_is_reported_and_the_check_goes_on_after_each(pristine: Path, tmp_path: Path) -> None:
    log = _copy(pristine, tmp_path, 0)
    files = [p for _, p in segment_files(log)]
    first, later = files[0], files[-2]

    def edit_line(path: Path, i: int) -> None:
        lines = path.read_bytes().splitlines()
        rec = json.loads(lines[i])
        rec["principal"] = "mallory"
        lines[i] = canonical(rec)
        path.write_bytes(b"".join(x + b"\n" for x in lines))

    edit_line(first, 2)
    edit_line(later, 1)
    report = verify(log, KEY)
    assert [(d.kind, d.file, d.line) for d in report.damages] == [
        ("edited", first.name, 3),
        ("edited", later.name, 2),
    ]
    assert report.resumes_at is not None and report.resumes_at > (report.damages[1].seq or 0)


@pytest.mark.anyio
async def test_a_writer_goes_on_after_damage_and_everything_it_writes_then_verifies(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    await _fill(log, 30)
    data = bytearray(log.read_bytes())
    rng = random.Random(5)
    for _ in range(4):  # random byte flips anywhere in the active file, the tail included
        data[rng.randrange(len(data) - 1)] ^= 1 << rng.randrange(8)
    data[-2] ^= 0x01  # and certainly in the last line
    log.write_bytes(bytes(data))
    before = verify(log, KEY)
    assert not before.ok
    writer = AuditLog(log, KEY, AuditOptions(fsync="never", max_file_bytes=4096, checkpoint_every=7))
    for i in range(10):
        await writer.write({"event": "start", "call_id": f"after-{i}"})
    await writer.aclose()
    after = verify(log, KEY)
    assert not after.ok  # the damage stays reported: nothing acknowledged is rewritten
    lines = [x for _, p in segment_files(log) for x in p.read_bytes().splitlines()]
    new = [json.loads(x) for x in lines if b'"call_id":"after-' in x]
    assert [r["call_id"] for r in new] == [f"after-{i}" for i in range(10)]
    assert after.resumes_at is not None and after.resumes_at <= new[0]["seq"]


def test_a_line_that_is_no_record_is_reported_and_the_records_after_it_verify(pristine: Path, tmp_path: Path) -> None:
    log = _copy(pristine, tmp_path, 0)
    lines = log.read_bytes().splitlines()
    after = json.loads(lines[3])["seq"]
    lines[2] = b"null"
    log.write_bytes(b"".join(x + b"\n" for x in lines))
    report = verify(log, KEY)
    assert report.damage is not None and (report.damage.kind, report.damage.line) == ("corrupt", 3)
    assert report.resumes_at == after
    with log.open("ab") as fh:
        fh.write(b'{"seq": 999, "ev')
    assert verify(log, KEY).resumes_at is None  # damage at the very end: nothing after it verifies
