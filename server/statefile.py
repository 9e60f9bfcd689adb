"""Files the gateway owns: private folders, atomic writes, reads that trust nothing.

Several gateway processes share one HOME (one per host application), any of
them can be killed at any byte, and anything else running as the user (or, on
a badly set up machine, as someone else) can leave bytes in these folders. So:

- folders are created 0700 and files 0600 whatever the umask;
- a write goes to a temp file in the same folder, is fsynced, then renamed over
  the target (and the folder fsynced): a reader sees the old file or the new
  one, never half of one, and a crash leaves at most a stray temp file;
- a read returns the bytes only when the file is a regular file owned by this
  user, writable by nobody else and under a size cap. Anything else is
  `UntrustedFileError` with the reason: callers ignore the file (logging once)
  and rewrite it; they never crash on it and never serve it.

Files that several processes append to (the audit trail) are guarded by an
advisory lock file beside them (`flock`: released by the kernel when a holder
dies, so a killed process never leaves it held).

Standard library only: the stdio fast start uses this before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

DIR_MODE = 0o700
FILE_MODE = 0o600
_warned: set[tuple[str, str]] = set()
_WARNED_MAX = 256  # one line per (file, reason) per process, bounded
T = TypeVar("T")


class UntrustedFileError(Exception):
    """A file the gateway owns cannot be trusted: missing bytes, wrong owner or mode, too large."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700; an existing folder of ours open to others is closed to 0700."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.mkdir(d, DIR_MODE)
        os.chmod(d, DIR_MODE)  # mkdir's mode passes through the umask; chmod does not
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{path} is not a folder")
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, DIR_MODE)
    return path


def write_atomic(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Write `data` to `path` all or nothing: temp file, fsync, rename, fsync of the folder."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def read_owned(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes, None when it does not exist; `UntrustedFileError` when it cannot be trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UntrustedFileError(path, f"cannot be opened ({exc.strerror or type(exc).__name__})") from exc
    try:
        st = os.fstat(fd)
        reason = _distrust(st, max_bytes)
        if reason is not None:
            raise UntrustedFileError(path, reason)
        chunks = []
        left = st.st_size + 1  # one byte more: a file that grew past the cap meanwhile is caught
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UntrustedFileError(path, f"larger than {max_bytes} bytes")
    return data


def _distrust(st: os.stat_result, max_bytes: int) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_size > max_bytes:
        return f"larger than {max_bytes} bytes"
    return None


def warn_once(logger_name: str, path: Path, reason: str, action: str = "ignored and rewritten") -> None:
    """One warning per (file, reason) per process: a bad file is reported, not on every read."""
    key = (str(path), reason)
    if key in _warned:
        return
    if len(_warned) >= _WARNED_MAX:
        _warned.clear()
    _warned.add(key)
    import logging  # only when there is something to say: the fast start imports nothing it can avoid

    logging.getLogger(logger_name).warning("%s: %s; %s", path, reason, action)


def write_new(path: Path, data: bytes, *, mode: int = FILE_MODE) -> bool:
    """Publish `data` at `path` only if nothing is there: temp file, fsync, hard link. False when it already exists.

    Concurrent creators agree: exactly one link succeeds and every other caller reads that file, which is
    complete from the moment it has a name. A failure (a full disk) leaves nothing behind.
    """
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return True


def load_json(path: Path, parse: Callable[[bytes], T], max_bytes: int, logger_name: str) -> T | None:
    """A cache file through its schema: None when absent, or when untrusted or ill-shaped (reported once)."""
    try:
        data = read_owned(path, max_bytes)
        return None if data is None else parse(data)
    except UntrustedFileError as exc:
        warn_once(logger_name, path, exc.reason)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        warn_once(logger_name, path, f"unreadable or of another shape or version ({type(exc).__name__})")
    return None


class CacheFolder:
    """Small cache files by name inside one private folder (what adapters get as their `CacheStore`)."""

    MAX_BYTES = 4 << 20

    def __init__(self, folder: Path, logger_name: str = "model_gateway.cache") -> None:
        self.folder = folder
        self._logger = logger_name

    def _path(self, name: str) -> Path:
        if not name or name != os.path.basename(name) or name.startswith("."):
            raise ValueError(f"not a plain file name: {name!r}")
        return self.folder / name

    def load(self, name: str, parse: Callable[[bytes], T]) -> T | None:
        return load_json(self._path(name), parse, self.MAX_BYTES, self._logger)

    def save(self, name: str, data: bytes) -> None:
        """Write the file whole; a disk that refuses (full, read-only) costs only the cache, reported once."""
        path = self._path(name)
        try:
            write_atomic(path, data)
        except OSError as exc:
            warn_once(self._logger, path, f"not written ({exc.strerror or type(exc).__name__})", "kept in memory only")


# --- advisory locks --------------------------------------------------------------


def open_lock(path: Path) -> int:
    """The descriptor of a lock file (created 0600, never written): lock it with `try_lock`."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    with contextlib.suppress(OSError):
        os.fchmod(fd, FILE_MODE)
    return fd


def try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False when another open file description holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def held(fd: int, timeout_s: float, what: Path) -> Iterator[None]:
    """Hold the lock on `fd`, waiting at most `timeout_s` (blocking: for start-up and commands, not the event loop)."""
    deadline = time.monotonic() + timeout_s
    pause = 0.0005
    while not try_lock(fd):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} stayed locked by another process for {timeout_s:g}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    try:
        yield
    finally:
        unlock(fd)
