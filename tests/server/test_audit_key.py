"""The audit key: complete or absent, one for every concurrent first start, never silently replaced."""

from __future__ import annotations

import multiprocessing
import os
import random
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from server.audit import AuditLog, AuditOptions
from server.audit_key import load_or_create_key
from server.audit_verify import verify
from server.errors import AuditUnavailableError

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def sink(folder: Path, **kw: Any) -> AuditLog:
    log = folder / "audit.jsonl"
    return AuditLog(
        log, partial(load_or_create_key, None, folder / "audit.key", log), AuditOptions(fsync="never", **kw)
    )


def key_of(folder: Path) -> bytes:
    return bytes.fromhex((folder / "audit.key").read_text())


async def test_a_first_start_creates_a_private_hex_key_and_later_starts_use_it(tmp_path: Path) -> None:
    first = sink(tmp_path / "audit")
    await first.write({"event": "start"})
    await first.aclose()
    key_file = tmp_path / "audit" / "audit.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_of(tmp_path / "audit")) == 32
    second = sink(tmp_path / "audit")
    await second.write({"event": "start"})
    await second.aclose()
    assert verify(tmp_path / "audit" / "audit.jsonl", key_of(tmp_path / "audit")).ok


def _start(folder: str, barrier: Any) -> None:
    async def run() -> None:
        barrier.wait()
        log = sink(Path(folder))
        assert log.healthy, log.error
        await log.write({"event": "start", "pid": os.getpid()})
        await log.aclose()

    anyio.run(run)


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_start, args=(str(folder), barrier)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    report = verify(folder / "audit.jsonl", key_of(folder))  # every record signed with the one key on disk
    assert report.ok and report.records == 8, report.damage
    assert sorted(p.name for p in folder.iterdir()) == [
        "audit.checkpoints.jsonl",
        "audit.jsonl",
        "audit.jsonl.lock",
        "audit.key",
    ]


FULL_DISK_START = """
import resource, signal, sys
from functools import partial
from pathlib import Path
from server.audit import AuditLog
from server.audit_key import load_or_create_key
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # every write into a file fails, as on a full disk
folder = Path(sys.argv[1])
log = AuditLog(folder / "audit.jsonl", partial(load_or_create_key, None, folder / "audit.key", folder / "audit.jsonl"))
print(log.error)
"""


def test_a_first_start_on_a_full_disk_leaves_no_key_behind_and_the_next_start_succeeds(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_START, str(folder)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "audit log cannot be opened" in out.stdout and "File too large" in out.stdout
    assert not (folder / "audit.key").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    log = sink(folder)
    assert log.healthy, log.error
    anyio.run(log.write, {"event": "start"})
    log.aclose_sync()
    assert verify(folder / "audit.jsonl", key_of(folder)).ok


def _flip_to_non_hex(data: bytes) -> bytes:
    out = bytearray(data)
    out[random.Random(3).randrange(len(out) - 1)] ^= 0x80
    return bytes(out)


DAMAGE = {
    "truncated": lambda b: b[:20],
    "zero length": lambda b: b"",
    "not a key": lambda b: b'{"key": "' + b[:64] + b'"}',
    "byte flips": _flip_to_non_hex,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_an_unusable_key_with_no_trail_behind_it_is_replaced(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "audit"
    folder.mkdir()
    (folder / "audit.key").write_bytes(DAMAGE[damage](b"ab" * 32 + b"\n"))  # left by an older version, say
    log = sink(folder)
    assert log.healthy, log.error
    await log.write({"event": "start"})
    await log.aclose()
    assert len(key_of(folder)) == 32 and stat.S_IMODE((folder / "audit.key").stat().st_mode) == 0o600
    assert verify(folder / "audit.jsonl", key_of(folder)).ok


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_an_unusable_key_that_a_trail_depends_on_refuses_calls_naming_the_file(
    tmp_path: Path, damage: str
) -> None:
    folder = tmp_path / "audit"
    first = sink(folder)
    await first.write({"event": "start"})
    await first.aclose()
    good = (folder / "audit.key").read_bytes()
    planted = DAMAGE[damage](good)
    (folder / "audit.key").write_bytes(planted)
    now = [0.0]
    log = sink(folder, clock=lambda: now[0])
    assert not log.healthy and str(folder / "audit.key") in (log.error or "")
    with pytest.raises(AuditUnavailableError, match="restore the key file"):
        await log.write({"event": "start"})
    assert (folder / "audit.key").read_bytes() == planted  # never replaced behind the user's back
    (folder / "audit.key").write_bytes(good)
    now[0] = 60.0  # past the retry interval: a restored key serves without a restart
    await log.write({"event": "start"})
    await log.aclose()
    report = verify(folder / "audit.jsonl", bytes.fromhex(good.decode()))
    assert report.ok and report.records == 2


async def test_a_different_key_never_extends_a_trail(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    first = sink(folder)
    await first.write({"event": "start"})
    await first.aclose()
    (folder / "audit.key").write_text("cd" * 32 + "\n")
    assert "does not match the audit log" in (sink(folder).error or "")
    log = folder / "audit.jsonl"
    with pytest.raises(AuditUnavailableError, match="MODEL_GATEWAY_AUDIT_KEY does not match"):
        load_or_create_key("ef" * 32, folder / "audit.key", log)


async def test_a_key_open_to_others_is_kept_only_when_the_trail_proves_it(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    first = sink(folder)
    await first.write({"event": "start"})
    await first.aclose()
    key_file = folder / "audit.key"
    os.chmod(key_file, 0o666)
    proven = sink(folder)
    assert proven.healthy, proven.error
    await proven.aclose()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # rewritten as ours, private
    key_file.write_text("cd" * 32 + "\n")
    os.chmod(key_file, 0o666)  # anyone could have put this one there, and the trail was not signed with it
    refused = sink(folder)
    assert not refused.healthy and "untrusted" in (refused.error or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
async def test_a_key_owned_by_someone_else_is_taken_over_only_when_the_trail_proves_it(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    first = sink(folder)
    await first.write({"event": "start"})
    await first.aclose()
    os.chown(folder / "audit.key", 65534, 65534)
    log = sink(folder)
    assert log.healthy, log.error
    await log.aclose()
    assert (folder / "audit.key").stat().st_uid == os.geteuid()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "audit.key").write_text("cd" * 32 + "\n")
    os.chown(fresh / "audit.key", 65534, 65534)  # no trail to prove it: a new key replaces it
    replaced = sink(fresh)
    assert replaced.healthy and key_of(fresh) != bytes.fromhex("cd" * 32)
    assert (fresh / "audit.key").stat().st_uid == os.geteuid()
    await replaced.aclose()
