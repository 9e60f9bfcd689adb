from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from server.statefile import (
    CacheFolder,
    UntrustedFileError,
    held,
    load_json,
    open_lock,
    private_dir,
    read_owned,
    try_lock,
    write_atomic,
    write_new,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_folders_and_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        target = tmp_path / "a" / "b" / "state.json"
        write_atomic(target, b"{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == 0o700
    assert _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(target) == 0o600
    assert target.read_bytes() == b"{}"


def test_an_existing_folder_open_to_others_is_closed(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    d.mkdir()
    os.chmod(d, 0o777)
    private_dir(d)
    assert _mode(d) == 0o700


def test_a_write_replaces_the_file_whole_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.json"
    write_atomic(target, b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_reading_a_missing_file_gives_none(tmp_path: Path) -> None:
    assert read_owned(tmp_path / "nope", 100) is None


def test_a_file_others_can_write_is_not_trusted(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_atomic(target, b"{}")
    os.chmod(target, 0o666)
    with pytest.raises(UntrustedFileError, match="writable by others"):
        read_owned(target, 100)


def test_a_file_over_the_cap_is_not_read(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_atomic(target, b"x" * 101)
    with pytest.raises(UntrustedFileError, match="larger than 100 bytes"):
        read_owned(target, 100)
    assert read_owned(target, 101) == b"x" * 101


def test_links_and_folders_are_not_trusted(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    write_atomic(real, b"{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(UntrustedFileError, match="cannot be opened"):
        read_owned(link, 100)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(UntrustedFileError):
        read_owned(tmp_path / "dir.json", 100)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_file_owned_by_someone_else_is_not_trusted(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_atomic(target, b"{}")
    os.chown(target, 65534, 65534)
    with pytest.raises(UntrustedFileError, match="owned by uid 65534"):
        read_owned(target, 100)


def test_a_new_file_is_published_complete_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state" / "key"
    real_write = os.write

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_new(target, b"secret\n")
    monkeypatch.setattr(os, "write", real_write)
    assert list(target.parent.iterdir()) == []  # no empty key, no temp file
    assert write_new(target, b"first\n") is True
    assert write_new(target, b"second\n") is False  # never replaces what is there
    assert target.read_bytes() == b"first\n" and _mode(target) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["key"]


def _publish(path: str, value: str, barrier: Any) -> None:
    barrier.wait()
    write_new(Path(path), value.encode())


def test_concurrent_creators_agree_on_one_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_publish, args=(str(target), f"value {i}", barrier)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    assert target.read_bytes().startswith(b"value ")
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def _parse_dict(data: bytes) -> dict[str, int]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return {str(k): int(v) for k, v in value.items()}


@pytest.mark.parametrize("content", [b"[]", b"null", b'{"a": "x"}', b"{", b"", b"\xff\xfe"])
def test_a_cache_file_of_the_wrong_shape_reads_as_absent_and_is_reported_once(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / f"cache-{content.hex()}.json"
    write_atomic(target, content)
    with caplog.at_level("WARNING"):
        assert load_json(target, _parse_dict, 1000, "test.cache") is None
        assert load_json(target, _parse_dict, 1000, "test.cache") is None
    assert len([r for r in caplog.records if str(target) in r.getMessage()]) == 1


def test_the_cache_folder_keeps_plain_names_only_and_survives_a_disk_that_refuses(tmp_path: Path) -> None:
    folder = CacheFolder(tmp_path / "cache")
    folder.save("a.json", b'{"x": 1}')
    assert folder.load("a.json", _parse_dict) == {"x": 1}
    assert _mode(tmp_path / "cache") == 0o700 and _mode(tmp_path / "cache" / "a.json") == 0o600
    for bad in ("../a.json", "sub/a.json", ".hidden", ""):
        with pytest.raises(ValueError, match="plain file name"):
            folder.load(bad, _parse_dict)
    blocked = CacheFolder(tmp_path / "file-not-folder")
    (tmp_path / "file-not-folder").write_text("x")
    blocked.save("a.json", b"{}")  # reported, not raised: a cache that cannot be written costs only the cache
    assert blocked.load("a.json", _parse_dict) is None


def _hold(path: str, ready: Any) -> None:
    fd = open_lock(Path(path))
    assert try_lock(fd)
    ready.set()
    time.sleep(60)


def test_a_lock_is_exclusive_across_processes_and_freed_when_its_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "trail.lock"
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(path), ready))
    holder.start()
    assert ready.wait(30)
    fd = open_lock(path)
    try:
        assert not try_lock(fd)
        with pytest.raises(TimeoutError, match=r"trail\.lock stayed locked"), held(fd, 0.05, path):
            pass
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
        with held(fd, 5.0, path):  # the kernel released it with the process
            assert _mode(path) == 0o600
    finally:
        os.close(fd)
