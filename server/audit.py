"""Append-only JSONL audit trail: one keyed chain for every process on a state dir, checkpoints, group commit.

Each line is one record. Its `mac` is HMAC-SHA256 over the previous record's
mac and the record's canonical JSON, keyed with a secret the log never
contains, so an edit, deletion, insertion or reordering breaks the chain and a
forger cannot re-compute it. The chain runs on across rotated files
(`audit.jsonl.000001`, ... then the active `audit.jsonl`).

Any number of gateway processes (one per host application on one HOME) append
to one trail. Each append takes the trail's lock file (`flock`, released by the
kernel if the holder dies), follows the active file if another process rotated
it, and re-reads the tail when the file changed since this process last wrote
(seq and prev come from the file, not from memory). Fsyncs run outside the lock.

Recovery never rewrites an acknowledged line. A torn last line (a crash
mid-write, never acknowledged) is cut and a `recover` record says how many
bytes went. A complete last line that cannot be linked to (unreadable, or its
MAC does not match: damage) stays where it is, and the chain goes on from a
keyed `restart` record after it; `audit verify` reports the damage and checks
the trail on from there.

Signed checkpoints, in `audit.checkpoints.jsonl` (chained with their own MACs),
record the latest durable (seq, mac): after the first record of every run,
every `checkpoint_every` records or `checkpoint_interval_s`, at each rotation
and at close. The verifier requires the log to reach the last checkpoint.

Durability: `write()` returns once the record is on disk under the fsync
policy: `always` (fsync per record), `group` (one fsync per group-commit
window, shared by every record written in it), `never` (written, not synced).
A sink that cannot write refuses every later call until it can write again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio

from server.audit_chain import (
    GENESIS,
    canonical,
    checkpoint_mac,
    checkpoints_path,
    evidence,
    key_id,
    lock_path,
    record_mac,
    segment_files,
)
from server.audit_key import load_or_create_key
from server.audit_writer import TrailWriter
from server.errors import AuditUnavailableError
from server.statefile import held, try_lock, unlock

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditOptions",
    "FsyncMode",
    "canonical",
    "checkpoint_mac",
    "checkpoints_path",
    "evidence",
    "key_id",
    "load_or_create_key",
    "record_mac",
    "segment_files",
]

log = logging.getLogger("model_gateway.audit")
FsyncMode = Literal["always", "group", "never"]
KeySource = Callable[[], bytes]
RETRY_AFTER_ERROR_S = 5.0
LOCK_TIMEOUT_S = 5.0
LOCK_SPIN_S = 0.0002
# A lone writer syncs on the event loop while its disk's typical sync takes less than this: handing
# fdatasync to a worker thread costs a thread wake-up (~150 us here when the machine is quiet, up to
# milliseconds when it is busy; more than the sync itself), and with nobody else in flight there is no
# one to group with. Disks whose typical sync is slower always sync in the thread.
INLINE_SYNC_MAX_S = 0.001
# "Typical" is the median of the last SYNC_WINDOW syncs, each timed without the thread hop: a lone
# spike (a busy disk's p99 here is ~1-3 ms against a ~60 us median) does not send every later call
# through the thread, while a disk that turns slow for half a window does.
SYNC_WINDOW = 16


@dataclass(frozen=True, slots=True)
class AuditOptions:
    """How a sink writes: the manifest's audit settings (see server/governance.py) and the redaction hooks.

    `clock` and `lock_timeout_s` are the sink's sense of time: tests move them, the server keeps the defaults.
    """

    fsync: FsyncMode = "group"
    group_commit_ms: float = 0.0
    max_file_bytes: int = 64 * 1024 * 1024
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 10.0
    # the value redactor, and the cheap scan of a record's body that says whether it is needed at all
    redact: Callable[[Any], Any] | None = None
    needs_redaction: Callable[[Any], bool] | None = None
    clock: Callable[[], float] = time.monotonic
    lock_timeout_s: float = LOCK_TIMEOUT_S


class AuditLog:
    """The audit sink. `write()` is the only entry point calls use; it raises when the sink cannot write."""

    def __init__(self, path: Path, key: bytes | KeySource, options: AuditOptions | None = None) -> None:
        opts = options or AuditOptions()
        self.path = path
        self._key_source: KeySource = key if callable(key) else _given(key)
        self.fsync = opts.fsync
        self.group_commit_s = opts.group_commit_ms / 1000
        self.checkpoint_every = opts.checkpoint_every
        self.checkpoint_interval_s = opts.checkpoint_interval_s
        self.lock_timeout_s = opts.lock_timeout_s
        redact = opts.redact
        needs = opts.needs_redaction or (lambda _: redact is not None)
        self._w = TrailWriter(path, opts.max_file_bytes, redact or (lambda v: v), needs)
        self._clock = opts.clock
        self.error: str | None = None
        self._error_at = 0.0
        self._base = 0  # records written by earlier openings of this sink (health counts them all)
        self._cp_time, self._needs_checkpoint = self._clock(), True
        self._synced_gen = 0
        self._sync_done: anyio.Event | None = None
        self._leader = False
        self.sync_s = 0.0  # the typical recent fsync latency (see SYNC_WINDOW)
        self._sync_times: deque[float] = deque(maxlen=SYNC_WINDOW)
        self.inline_syncs = 0
        self._open()

    @property
    def healthy(self) -> bool:
        return self.error is None

    @property
    def key_id(self) -> str:
        return self._w.key_id

    @property
    def seq(self) -> int:
        return self._w.seq

    @property
    def records(self) -> int:
        return self._base + self._w.appended

    @property
    def _written_gen(self) -> int:
        return self._w.appended

    def _open(self) -> None:
        try:
            self._w.open(self._key_source, self.lock_timeout_s)
        except (OSError, AuditUnavailableError) as exc:
            self._w.close()
            self._fail("audit log cannot be opened", exc)
            return
        self._cp_time, self._needs_checkpoint = self._clock(), True

    # --- failing closed ---------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        self.error = f"{what}: {reason}"
        self._error_at = self._clock()
        log.error("%s; calls are refused until it can write", self.error)

    def _refusal(self) -> AuditUnavailableError:
        return AuditUnavailableError(f"call refused: {self.error}")

    def _refuse_if_failed(self) -> None:
        if self.error is None:
            return
        if self._clock() - self._error_at < RETRY_AFTER_ERROR_S:
            raise self._refusal()
        # a sink that can write again (space freed, key restored) serves again
        self._close()
        self.error = None
        self._open()
        if self.error is not None:
            raise self._refusal()
        log.warning("audit log writable again")

    def _checkpoint_due(self) -> bool:
        if self._w.cp.seq >= self._w.seq:
            return False
        return (
            self._needs_checkpoint
            or self._w.seq - self._w.cp.seq >= self.checkpoint_every
            or self._clock() - self._cp_time >= self.checkpoint_interval_s
        )

    async def write(self, body: dict[str, Any], durable: bool = True, *, alone: bool = False) -> None:
        """Append one record; with `durable`, return once it (and all before it) is on disk under the fsync policy.

        `durable=False` appends in order and leaves the fsync to the next durable write: a call's start
        record becomes durable together with its finish record, before the result is returned.
        `alone` says no other call is in flight: on a fast disk the sync then runs on the event loop.
        """
        if self.write_now(body, durable, alone=alone):
            return
        self._refuse_if_failed()
        try:
            if not try_lock(self._w.lock_fd):
                await self._wait_for_lock()
        except OSError as exc:
            self._fail("audit log cannot be locked", exc)
            raise self._refusal() from exc
        self._append_locked(body)
        if not durable:
            return
        if self.fsync != "never" and alone and self._inline_ok():
            self._sync_inline(self._written_gen)  # the lock was busy a moment; the sync still needs no thread
        elif self.fsync == "always":
            await self._sync(self._written_gen)
        elif self.fsync == "group":
            await self._group_commit(self._written_gen)
        elif self._checkpoint_due():
            await self._sync(self._written_gen)

    def write_now(self, body: dict[str, Any], durable: bool = True, *, alone: bool = False) -> bool:
        """`write()` when it can finish without waiting: True once done; False, with nothing written, otherwise.

        It waits for nothing when the trail's lock is free and, for a durable record, the sync can run
        right here (fsync `never`, or a lone writer on a fast disk, see INLINE_SYNC_MAX_S). A caller
        that must not be cancelled half way (a call's finish) then needs no shielding at all.
        """
        if durable and self.fsync != "never" and not (alone and self._inline_ok()):
            return False
        self._refuse_if_failed()
        try:
            if not try_lock(self._w.lock_fd):
                return False
        except OSError as exc:
            self._fail("audit log cannot be locked", exc)
            raise self._refusal() from exc
        self._append_locked(body)
        if durable and (self.fsync != "never" or self._checkpoint_due()):
            self._sync_inline(self._written_gen)  # nobody can join or interleave: nothing here suspends
        return True

    def _append_locked(self, body: dict[str, Any]) -> None:
        """Append under the lock the caller took; the lock is released either way."""
        try:
            self._w.append(body)
        except OSError as exc:
            self._fail("audit log not writable", exc)
            raise self._refusal() from exc
        finally:
            unlock(self._w.lock_fd)

    async def _wait_for_lock(self) -> None:
        """The trail's lock when another process holds it (for microseconds), without blocking the loop for long.

        A busy lock is retried for up to LOCK_SPIN_S before the first sleep: the loop's timers run at
        millisecond granularity, so sleeping at once would cost a whole millisecond per contended append.
        """
        fd = self._w.lock_fd
        spin_until = time.perf_counter() + LOCK_SPIN_S
        while time.perf_counter() < spin_until:
            if try_lock(fd):
                return
        deadline = self._clock() + self.lock_timeout_s
        while not try_lock(fd):
            if self._clock() >= deadline:
                held_by_other = f"{lock_path(self.path)} stayed locked by another process"
                raise AuditUnavailableError(f"call refused: {held_by_other}")
            await anyio.sleep(0.001)

    # --- durability -----------------------------------------------------------------------

    def _inline_ok(self) -> bool:
        return not self._leader and self.group_commit_s == 0 and self.sync_s <= INLINE_SYNC_MAX_S

    async def _sync(self, target: int) -> None:
        w = self._w
        seq, mac, segment = w.seq, w.prev, w.segment  # what this sync makes durable
        try:
            await self._fsync_fd(w.fd)
            if self._checkpoint_signed(seq, mac, segment):
                await self._fsync_fd(w.cp_fd)
        except OSError as exc:
            self._fail("audit log fsync failed", exc)
            raise self._refusal() from exc
        self._synced_gen = max(self._synced_gen, target)

    def _sync_inline(self, target: int) -> None:
        """`_sync()` on the event loop, for a lone writer on a fast disk (or fsync `never`: checkpoints only)."""
        w = self._w
        seq, mac, segment = w.seq, w.prev, w.segment
        try:
            self._fsync_inline(w.fd)
            if self._checkpoint_signed(seq, mac, segment):
                self._fsync_inline(w.cp_fd)
        except OSError as exc:
            self._fail("audit log fsync failed", exc)
            raise self._refusal() from exc
        self._synced_gen = max(self._synced_gen, target)

    def _checkpoint_signed(self, seq: int, mac: str, segment: int) -> bool:
        """Sign (seq, mac) when a checkpoint is due; the caller syncs the checkpoints file when this says so.

        A checkpoint waits for nobody: when another process holds the lock, the next sync signs.
        """
        w = self._w
        if not (self._checkpoint_due() and try_lock(w.lock_fd)):
            return False
        try:
            signed = w.checkpoint(seq, mac, segment)
        finally:
            unlock(w.lock_fd)
        self._cp_time, self._needs_checkpoint = self._clock(), False
        return signed

    def _fsync_inline(self, fd: int) -> None:
        if self.fsync == "never":
            return
        self._note_sync(_timed_sync(fd))
        self.inline_syncs += 1

    async def _fsync_fd(self, fd: int) -> None:
        """fsync in a worker thread (the inline sync is `_fsync_inline`)."""
        if self.fsync == "never":
            return
        # a duplicate, because rotation may close the original while the thread syncs
        self._note_sync(await anyio.to_thread.run_sync(_fsync_owned, os.dup(fd)))

    def _note_sync(self, took: float) -> None:
        times = self._sync_times
        times.append(took)
        self.sync_s = sorted(times)[len(times) // 2]

    async def _group_commit(self, gen: int) -> None:
        while self._synced_gen < gen:
            if self.error is not None:
                raise self._refusal()
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

    # --- closing ------------------------------------------------------------------------------

    def _close(self) -> None:
        self._base += self._w.appended
        self._w.appended = self._synced_gen = 0
        self._w.close()

    def aclose_sync(self) -> None:
        w = self._w
        if w.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.fsync(w.fd)
            if self.error is None and w.cp.seq < w.seq:
                with held(w.lock_fd, self.lock_timeout_s, lock_path(self.path)):
                    signed = w.checkpoint(w.seq, w.prev, w.segment)
                if signed:
                    os.fsync(w.cp_fd)
        self._close()

    async def aclose(self) -> None:
        self.aclose_sync()


def _given(key: bytes) -> KeySource:
    return lambda: key


# fdatasync still flushes what reading the appended bytes needs (the file size), skipping the mtime
_sync_data = getattr(os, "fdatasync", os.fsync)


def _timed_sync(fd: int) -> float:
    started = time.perf_counter()
    _sync_data(fd)
    return time.perf_counter() - started


def _fsync_owned(fd: int) -> float:
    """Sync a duplicate descriptor and close it; how long the sync itself took (not the thread hop)."""
    try:
        return _timed_sync(fd)
    finally:
        os.close(fd)
