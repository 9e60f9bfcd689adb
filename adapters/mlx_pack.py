"""What an installed model pack holds, checked by content.

`model-gateway models pull` records every file of a pack with its size and sha256 in `<pack>/.pack.json`
(written last, so a pack without it is not installed). Before a pack's model serves, its files are checked
against that record: sizes at once, contents by hashing them on a helper thread while the model loads, so
a flipped byte in the weights or an edited tokenizer is refused with the command that re-installs the pack.

The record is the trust anchor, so it is read only when it is a regular file owned by this user and
writable by nobody else. Standard library only: `models list` and the server use this without MLX.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import cast

MARKER = ".pack.json"
MARKER_MAX_BYTES = 1 << 20
_BLOCK = 1 << 20
_SHA256_HEX = frozenset("0123456789abcdef")


class PackContentError(Exception):
    """A pack's files do not match what was installed, or its record cannot be trusted."""


def pull_command(name: str) -> str:
    return f"model-gateway models pull {name}"


def repull_hint(name: str) -> str:
    return f"run `{pull_command(name)}` to re-install it"


@dataclass(frozen=True, slots=True)
class PackRecord:
    """Files of a pack (relative POSIX path -> size, and -> sha256 when the installer recorded them)."""

    fields: Mapping[str, object]
    sizes: Mapping[str, int]
    digests: Mapping[str, str] | None


def file_digest(path: Path, stop: threading.Event | None = None) -> str:
    """sha256 of a file, read in 1 MiB blocks (hashlib releases the GIL for each); '' when stopped early."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            if stop is not None and stop.is_set():
                return ""
            digest.update(block)
    return digest.hexdigest()


def describe_files(directory: Path) -> dict[str, object]:
    """Sizes and sha256 of every file under `directory` except the record itself, for the record."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER)
    rel = [p.relative_to(directory).as_posix() for p in files]
    return {
        "files": {r: p.stat().st_size for r, p in zip(rel, files, strict=True)},
        "sha256_files": {r: file_digest(p) for r, p in zip(rel, files, strict=True)},
    }


def read_record(directory: Path) -> PackRecord | None:
    """The pack's record; None when there is none; PackContentError when it cannot be trusted or parsed."""
    raw = _read_private(directory / MARKER)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise PackContentError(f"{directory / MARKER} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise PackContentError(f"{directory / MARKER} is not a JSON object")
    sizes = _mapping(data.get("files"), lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
    digests = _mapping(data.get("sha256_files"), _is_sha256)
    if sizes is None or (digests is not None and set(digests) != set(sizes)):
        raise PackContentError(f"{directory / MARKER} does not list the pack's files in the expected shape")
    return PackRecord(
        data,
        {k: int(cast(int, v)) for k, v in sizes.items()},
        None if digests is None else {k: str(v) for k, v in digests.items()},
    )


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _SHA256_HEX


def _mapping(value: object, valid: Callable[[object], bool]) -> dict[str, object] | None:
    if not isinstance(value, dict):
        return None
    for key, item in value.items():
        parts = PurePosixPath(key).parts
        if not parts or PurePosixPath(key).is_absolute() or ".." in parts or not valid(item):
            raise PackContentError(f"{MARKER} lists an unsafe or malformed entry {key[:80]!r}")
    return dict(value)


def _read_private(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PackContentError(f"{path} cannot be opened ({exc.strerror or type(exc).__name__})") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PackContentError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise PackContentError(f"{path} is writable by another user (owner uid {st.st_uid}, mode {st.st_mode:o})")
        data = fh.read(MARKER_MAX_BYTES + 1)
    if len(data) > MARKER_MAX_BYTES:
        raise PackContentError(f"{path} is larger than {MARKER_MAX_BYTES} bytes")
    return data


def size_problem(directory: Path, record: PackRecord) -> str | None:
    """The first file missing or of another size than recorded (cheap: one stat per file)."""
    for rel, size in record.sizes.items():
        file = directory / rel
        try:
            actual = file.stat().st_size if file.is_file() else None
        except OSError:
            actual = None
        if actual is None:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} has {actual:,} bytes where {size:,} were installed"
    return None


def content_problem(directory: Path, record: PackRecord, stop: threading.Event | None = None) -> str | None:
    """The first file whose sha256 differs from the record (reads every file), or why it cannot be checked."""
    if record.digests is None:
        return "it was installed by an older version that did not record content hashes"
    for rel, expected in record.digests.items():
        try:
            actual = file_digest(directory / rel, stop)
        except OSError as exc:
            return f"{rel} cannot be read ({exc.strerror or type(exc).__name__})"
        if stop is not None and stop.is_set():
            return "the check was stopped"
        if actual != expected:
            return f"{rel} has different content than was installed (sha256 mismatch)"
    return None


class ContentCheck:
    """Hashes a pack's files on a helper thread (no MLX there) while the caller loads the model."""

    def __init__(self, directory: Path, record: PackRecord) -> None:
        self._directory, self._record = directory, record
        self._stop = threading.Event()
        self._done = threading.Event()
        self.problem: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"pack-check-{directory.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.problem = content_problem(self._directory, self._record, self._stop)
        except Exception as exc:  # reported as the check's outcome; the loader refuses the pack
            self.problem = f"the content check failed ({type(exc).__name__})"
        finally:
            self._done.set()

    def wait(self, between: Callable[[], bool], poll_s: float = 0.02) -> str | None:
        """Wait for the result, calling `between()` every poll; it returns True to abandon the check."""
        while not self._done.wait(poll_s):
            if between():
                self.cancel()
                return "the check was stopped"
        return self.problem

    def cancel(self) -> None:
        """Stop hashing at the next block; the helper thread then ends on its own."""
        self._stop.set()
