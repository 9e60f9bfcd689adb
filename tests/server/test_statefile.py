from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from server.statefile import UntrustedFileError, private_dir, read_owned, write_atomic


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
