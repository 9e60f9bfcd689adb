"""Append-only JSONL audit trail: keyed chain, signed checkpoints, group commit, rotation.

Each line is one record. Its `mac` is HMAC-SHA256 over the previous record's
mac and the record's canonical JSON, keyed with a secret the log never
contains, so an edit, deletion, insertion or reordering breaks the chain and a
forger cannot re-compute it (a plain hash chain can be rewritten and rehashed).
The chain runs on across rotated files (`audit.jsonl.000001`, ... then the
active `audit.jsonl`), so a swapped, dropped or replaced file breaks it too.

A chain alone cannot show that its tail was cut off. Signed checkpoints, in a
separate file (`audit.checkpoints.jsonl`, chained with their own MACs), record
the latest durable (seq, mac): after the first record of every run, every
`checkpoint_every` records or `checkpoint_interval_s`, at each rotation and at
close. The verifier (server/audit_verify.py) requires the log to reach the
last checkpoint. Records written after the last checkpoint of a run that
crashed are the one window a consistent cut of both files can hide; keep the
checkpoint file (or a copy of it) somewhere the log's writer cannot rewrite to
close that window too.

Raw prompts, texts and secrets never enter a record: only sha256 evidence of
the canonical request and response, unless the manifest opts in to content
capture. Every string is passed through the redactor before it is written.

Durability: `write()` returns once the record is on disk under the fsync
policy: `always` (fsync per record), `group` (one fsync per group-commit
window, shared by every record written in it), `never` (written, not synced).
A sink that cannot write refuses every later call until it can write again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import anyio
import orjson

from server.errors import AuditUnavailableError

log = logging.getLogger("model_gateway.audit")

FsyncMode = Literal["always", "group", "never"]
GENESIS = "0" * 64
SEGMENT_DIGITS = 6
RETRY_AFTER_ERROR_S = 5.0
# A lone writer syncs on the event loop while syncs take less than this: handing fdatasync to a
# worker thread costs a thread wake-up (~150 us here, about what the sync itself costs), and with
# nobody else in flight there is no one to group with. Slower disks always sync in the thread.
INLINE_SYNC_MAX_S = 0.001


def canonical(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes every MAC and evidence hash is taken over (orjson: ~5x json)."""
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def evidence(value: Any) -> str:
    """sha256 of the canonical JSON of a request or response."""
    return hashlib.sha256(canonical(value)).hexdigest()


def record_mac(key: bytes, prev: str, body: Mapping[str, Any]) -> str:
    return _mac(key, prev, canonical(body))


def _mac(key: bytes, prev: str, canonical_body: bytes) -> str:
    return hmac.new(key, prev.encode() + b"\n" + canonical_body, hashlib.sha256).hexdigest()


def checkpoint_mac(key: bytes, prev: str, body: Mapping[str, Any]) -> str:
    # a distinct prefix, so a record line can never pass as a checkpoint or the reverse
    return hmac.new(key, b"checkpoint\n" + prev.encode() + b"\n" + canonical(body), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A public fingerprint of the key, so the verifier can say 'wrong key' rather than 'edited'."""
    return hashlib.sha256(b"model-gateway audit key\n" + key).hexdigest()[:16]


def checkpoints_path(path: Path) -> Path:
    return path.with_name(path.stem + ".checkpoints.jsonl")


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


def rotated_name(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index:0{SEGMENT_DIGITS}d}")


def load_or_create_key(key_hex: str | None, key_path: Path) -> bytes:
    """The audit key: from settings if given, else a key file, created on first run."""
    if key_hex:
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            key = key_hex.encode()
        if len(key) < 16:
            raise AuditUnavailableError("audit key is shorter than 16 bytes")
        return key
    if key_path.is_file():
        key = bytes.fromhex(key_path.read_text(encoding="ascii").strip())
        if len(key) < 16:
            raise AuditUnavailableError(f"audit key file {key_path} holds fewer than 16 bytes")
        return key
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    log.warning("generated a new audit key at %s; keep a copy elsewhere to verify this log later", key_path)
    return bytes.fromhex(key_path.read_text(encoding="ascii").strip())


def last_line(path: Path, repair: bool) -> tuple[dict[str, Any] | None, int]:
    """The last complete record of a JSONL file and the torn bytes after it (cut when `repair`)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, 0
    if not stat.S_ISREG(st.st_mode):
        return None, 0
    with path.open("rb") as fh:
        fh.seek(max(0, st.st_size - (1 << 20)))
        tail = fh.read()
    cut = tail.rfind(b"\n") + 1
    torn = len(tail) - cut
    if torn and repair:
        with path.open("r+b") as fh:
            fh.truncate(st.st_size - torn)
            os.fsync(fh.fileno())
    complete = tail[:cut].splitlines()
    return (json.loads(complete[-1]) if complete else None), torn


class AuditLog:
    """The audit sink. `write()` is the only entry point calls use; it raises when the sink cannot write."""

    def __init__(
        self,
        path: Path,
        key: bytes,
        fsync: FsyncMode = "group",
        group_commit_ms: float = 0.0,
        *,
        max_file_bytes: int = 64 * 1024 * 1024,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 10.0,
        redact: Callable[[Any], Any] | None = None,
        needs_redaction: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._key = key
        self.fsync = fsync
        self.group_commit_s = group_commit_ms / 1000
        self.max_file_bytes = max_file_bytes
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self._redact = redact or (lambda v: v)
        # a whole-record scan decides whether the (slower) per-string redaction is needed at all
        self._needs_redaction = needs_redaction or (lambda _: redact is not None)
        self._clock = clock
        self.error: str | None = None
        self._error_at = 0.0
        self.records = 0
        self.seq, self._prev, self._cp_n, self._cp_prev = 0, GENESIS, 0, GENESIS
        self._segment, self._fd, self._cp_fd, self._size = 1, -1, -1, 0
        self._cp_seq, self._cp_time, self._needs_checkpoint = 0, clock(), True
        self._written_gen = self._synced_gen = 0
        self._sync_done: anyio.Event | None = None
        self._leader = False
        self.sync_s = 0.0  # recent fsync latency: jumps up at once, decays slowly
        self.inline_syncs = 0
        try:
            self._open()
        except OSError as exc:
            self._fail("audit log cannot be opened", exc)
            log.error("%s; every call will be refused until it can write", self.error)

    @property
    def healthy(self) -> bool:
        return self.error is None

    @property
    def key_id(self) -> str:
        return key_id(self._key)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._segment = segment_files(self.path)[-1][0]
        last, torn = last_line(self.path, repair=True)
        if last is None and self._segment > 1:
            last, _ = last_line(rotated_name(self.path, self._segment - 1), repair=False)
        if last is not None:
            self.seq, self._prev = int(last["seq"]), str(last["mac"])
        cp, _ = last_line(checkpoints_path(self.path), repair=True)
        if cp is not None:
            self._cp_n, self._cp_prev, self._cp_seq = int(cp["n"]), str(cp["cmac"]), int(cp["seq"])
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._cp_fd = os.open(checkpoints_path(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        if torn:
            log.warning("audit log ended in a torn record (%d bytes, never acknowledged); cut it", torn)
            self._append({"event": "recover", "torn_bytes": torn})

    def _fail(self, what: str, exc: OSError) -> None:
        self.error = f"{what}: {exc.strerror or type(exc).__name__}"
        self._error_at = self._clock()

    def _refuse_if_failed(self) -> None:
        if self.error is None:
            return
        if self._clock() - self._error_at < RETRY_AFTER_ERROR_S:
            raise AuditUnavailableError(f"call refused: {self.error}")
        self._close_fds()
        try:
            self._open()  # a sink that can write again (space freed, permission fixed) serves again
        except OSError as exc:
            self._fail("audit log cannot be opened", exc)
            raise AuditUnavailableError(f"call refused: {self.error}") from exc
        log.warning("audit log writable again after: %s", self.error)
        self.error = None

    def _line(self, body: dict[str, Any]) -> tuple[bytes, int, str]:
        seq = self.seq + 1
        head = {"seq": seq, "ts": round(time.time(), 6)}
        raw = canonical({**head, **body})
        if self._needs_redaction(raw.decode()):
            raw = canonical({**head, **self._redact(body)})
        mac = _mac(self._key, self._prev, raw)
        # the MAC covers the canonical record; `prev` and `mac` ride along (verifiers re-canonicalise)
        tail = f',"prev":"{self._prev}","mac":"{mac}"}}\n'.encode()
        return raw[:-1] + tail, seq, mac

    def _append(self, body: dict[str, Any]) -> None:
        line, seq, mac = self._line(body)
        if self._size and self._size + len(line) > self.max_file_bytes:
            self._rotate()
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, os.strerror(28))  # a short write on a regular file: the disk is full
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # never leave a torn record behind a refusal
            self._fail("audit log not writable", exc)
            raise AuditUnavailableError(f"call refused: {self.error}") from exc
        self.seq, self._prev = seq, mac
        self._size += len(line)
        self.records += 1
        self._written_gen += 1

    def _rotate(self) -> None:
        try:
            os.fsync(self._fd)
            if self._cp_seq < self.seq:
                self._checkpoint(self.seq, self._prev, self._segment)
                os.fsync(self._cp_fd)
            os.rename(self.path, rotated_name(self.path, self._segment))
            new_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            self._fail("audit log rotation failed", exc)
            raise AuditUnavailableError(f"call refused: {self.error}") from exc
        os.close(self._fd)
        self._fd, self._segment, self._size = new_fd, self._segment + 1, 0

    def _checkpoint(self, seq: int, mac: str, segment: int) -> None:
        """Sign (seq, mac) of a record already on disk; the caller syncs the checkpoint file."""
        n = self._cp_n + 1
        body = {"n": n, "ts": round(time.time(), 6), "seq": seq, "mac": mac, "segment": segment, "key_id": self.key_id}
        cmac = checkpoint_mac(self._key, self._cp_prev, body)
        os.write(self._cp_fd, canonical({**body, "prev": self._cp_prev, "cmac": cmac}) + b"\n")
        self._cp_n, self._cp_prev, self._cp_seq = n, cmac, seq
        self._cp_time, self._needs_checkpoint = self._clock(), False

    def _checkpoint_due(self) -> bool:
        if self._cp_seq >= self.seq:
            return False
        return (
            self._needs_checkpoint
            or self.seq - self._cp_seq >= self.checkpoint_every
            or self._clock() - self._cp_time >= self.checkpoint_interval_s
        )

    async def write(self, body: dict[str, Any], durable: bool = True, *, alone: bool = False) -> None:
        """Append one record; with `durable`, return once it (and all before it) is on disk under the fsync policy.

        `durable=False` appends in order and leaves the fsync to the next durable write: a call's start
        record becomes durable together with its finish record, before the result is returned.
        `alone` says no other call is in flight: on a fast disk the sync then runs on the event loop.
        """
        self._refuse_if_failed()
        self._append(body)
        if not durable:
            return
        if self.fsync != "never" and alone and self._inline_ok():
            await self._sync(self._written_gen, inline=True)  # never suspends: nobody can join or interleave
        elif self.fsync == "always":
            await self._sync(self._written_gen)
        elif self.fsync == "group":
            await self._group_commit(self._written_gen)
        elif self._checkpoint_due():
            await self._sync(self._written_gen)

    def _inline_ok(self) -> bool:
        return not self._leader and self.group_commit_s == 0 and self.sync_s <= INLINE_SYNC_MAX_S

    async def _sync(self, target: int, inline: bool = False) -> None:
        seq, mac, segment = self.seq, self._prev, self._segment  # what this sync makes durable
        try:
            await self._fsync_fd(self._fd, inline)
            if self._checkpoint_due():
                self._checkpoint(seq, mac, segment)
                await self._fsync_fd(self._cp_fd, inline)
        except OSError as exc:
            self._fail("audit log fsync failed", exc)
            raise AuditUnavailableError(f"call refused: {self.error}") from exc
        self._synced_gen = max(self._synced_gen, target)

    async def _fsync_fd(self, fd: int, inline: bool) -> None:
        if self.fsync == "never":
            return
        started = time.perf_counter()
        if inline:
            _sync_data(fd)
            self.inline_syncs += 1
        else:
            # a duplicate, because rotation may close the original while the thread syncs
            await anyio.to_thread.run_sync(_fsync_owned, os.dup(fd))
        took = time.perf_counter() - started
        self.sync_s = took if took > self.sync_s else 0.9 * self.sync_s + 0.1 * took

    async def _group_commit(self, gen: int) -> None:
        while self._synced_gen < gen:
            if self.error is not None:
                raise AuditUnavailableError(f"call refused: {self.error}")
            if self._leader:
                assert self._sync_done is not None
                await self._sync_done.wait()
                continue
            self._leader = True
            self._sync_done = anyio.Event()
            try:
                with anyio.CancelScope(shield=True):
                    # the window gathers company; 0 is classic group commit: records that
                    # arrive while one fsync runs share the next one
                    if self.group_commit_s:
                        await anyio.sleep(self.group_commit_s)
                    await self._sync(self._written_gen)
            finally:
                self._leader = False
                self._sync_done.set()

    def _close_fds(self) -> None:
        for fd in (self._fd, self._cp_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._cp_fd = -1

    def aclose_sync(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
            if self.error is None and self._cp_seq < self.seq:
                self._checkpoint(self.seq, self._prev, self._segment)
                os.fsync(self._cp_fd)
        self._close_fds()

    async def aclose(self) -> None:
        self.aclose_sync()


# fdatasync still flushes what reading the appended bytes needs (the file size), skipping the mtime
_sync_data = getattr(os, "fdatasync", os.fsync)


def _fsync_owned(fd: int) -> None:
    try:
        _sync_data(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
