"""One process's hand on a shared audit trail: the files, with the trail's lock held around every change.

`TrailWriter` does the synchronous file work of the sink (server/audit.py):
open, follow, append, rotate, checkpoint. Every method that reads or changes
the files expects the caller to hold the lock (`lock_fd`). Before each append,
when the file's size is not what this process left it at, it adopts the tail
others wrote (server/audit_tail.py): `seq` and `prev` always come from the file,
so any number of processes extend one chain. A rotation ends the old file with
a `rotate` record, which is how the others learn of it (one seek per append,
no name lookup).
Errors are OSError; the sink turns them into refusals.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.audit_chain import (
    GENESIS,
    RecordMac,
    canonical,
    checkpoint_mac,
    checkpoints_path,
    key_id,
    lock_path,
    rotated_name,
    segment_files,
)
from server.audit_tail import ROTATE, ChainEnd, CheckpointEnd, open_append, read_chain_end, read_checkpoint_end
from server.statefile import fsync_dir, held, open_lock, private_dir

Redact = Callable[[Any], Any]
NAME_CHECK_S = 1.0


class TrailWriter:
    def __init__(self, path: Path, max_file_bytes: int, redact: Redact, needs_redaction: Callable[[Any], bool]) -> None:
        self.path = path
        self.max_file_bytes = max_file_bytes
        self._redact = redact
        self._needs_redaction = needs_redaction
        self.key = b""
        self._mac = RecordMac(b"")
        self.seq, self.prev, self.segment, self.size = 0, GENESIS, 1, -1
        self.cp = CheckpointEnd(0, GENESIS, 0, -1, False)
        self.fd = self.cp_fd = self.lock_fd = -1
        self.appended = 0  # records this process wrote, its own included (recover, restart, rotate)
        self._name_checked = time.monotonic()

    @property
    def key_id(self) -> str:
        return key_id(self.key) if self.key else ""

    def open(self, key: Callable[[], bytes], timeout_s: float) -> None:
        """Take the lock, load the key (under it: concurrent first starts agree), open and adopt both files."""
        private_dir(self.path.parent)
        self.lock_fd = open_lock(lock_path(self.path))
        with held(self.lock_fd, timeout_s, lock_path(self.path)):
            self.key = key()
            self._mac = RecordMac(self.key)
            self.fd = open_append(self.path)
            self.cp_fd = open_append(checkpoints_path(self.path))
            self.segment = segment_files(self.path)[-1][0]
            self.size, self.cp = -1, CheckpointEnd(0, GENESIS, 0, -1, False)
            self.refresh_checkpoints()
            self.refresh()

    def refresh(self) -> None:
        """Adopt what other processes wrote since this one last did; follow them into a new active file.

        A rotation ends the old file with a seal record, so the size check that runs before every append
        also notices a rotation. A name check (a stat) runs only once a second: it follows an active file
        that something else moved or removed.
        """
        now = time.monotonic()
        if now >= self._name_checked + NAME_CHECK_S:
            self._name_checked = now
            if not self._at_path(self.fd):
                self._reopen()
        size = os.lseek(self.fd, 0, os.SEEK_END)
        if size == self.size:
            return
        end = read_chain_end(self.fd, size, self.path, self.segment, self.key)
        if not end.sealed:
            self._adopt(end)
            return
        if self._at_path(self.fd):  # the rotating process stopped between seal and rename: finish for it
            self.seq, self.prev, self.size = end.seq, end.mac, end.size
            self._rename_and_reopen()
        else:
            self._reopen()
        self.refresh()

    def _at_path(self, fd: int) -> bool:
        st = os.fstat(fd)
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (named.st_ino, named.st_dev) == (st.st_ino, st.st_dev)

    def _reopen(self) -> None:
        fd = open_append(self.path)
        os.close(self.fd)
        self.fd, self.segment, self.size = fd, segment_files(self.path)[-1][0], -1

    def _adopt(self, end: ChainEnd) -> None:
        self.seq, self.prev, self.size = end.seq, end.mac, end.size
        cut = self.cp.seq > end.seq  # a checkpoint signed more than the log holds: records were cut
        if end.damaged or cut:
            reason = end.damaged or f"the log ends at seq {end.seq}, before the checkpointed seq {self.cp.seq}"
            after = end.last_good if end.damaged else end.seq
            self.seq = max(end.seq, self.cp.seq)  # never reuse a number a checkpoint signed
            body = {"event": "restart", "reason": reason, "after_seq": after, "torn_bytes": end.torn}
            self._put(*self._line(body, GENESIS))
        elif end.torn:
            self._put(*self._line({"event": "recover", "torn_bytes": end.torn}, self.prev))

    def refresh_checkpoints(self) -> None:
        st = os.fstat(self.cp_fd)
        if st.st_size != self.cp.size:
            self.cp = read_checkpoint_end(self.cp_fd, st.st_size, self.key)

    def _line(self, body: dict[str, Any], prev: str) -> tuple[bytes, int, str]:
        seq = self.seq + 1
        record = {"seq": seq, "ts": round(time.time(), 6)}
        record.update(body)
        if self._needs_redaction(body):
            record = {"seq": seq, "ts": record["ts"]}
            record.update(self._redact(body))
        raw = canonical(record)
        mac = self._mac(prev, raw)
        # the MAC covers the canonical record; `prev` and `mac` ride along (verifiers re-canonicalise)
        tail = f',"prev":"{prev}","mac":"{mac}"}}\n'.encode()
        return raw[:-1] + tail, seq, mac

    def append(self, body: dict[str, Any]) -> None:
        """One record after whatever the file ends with now (rotating first when it would grow too large)."""
        self.refresh()
        line, seq, mac = self._line(body, self.prev)
        if self.size and self.size + len(line) > self.max_file_bytes:
            self.rotate()
            line, seq, mac = self._line(body, self.prev)  # after the seal
        self._put(line, seq, mac)

    def _put(self, line: bytes, seq: int, mac: str) -> None:
        try:
            if os.write(self.fd, line) != len(line):
                raise OSError(28, os.strerror(28))  # a short write on a regular file: the disk is full
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)  # never leave a torn record behind a refusal
            raise
        self.seq, self.prev = seq, mac
        self.size += len(line)
        self.appended += 1

    def rotate(self) -> None:
        """Seal the active file (its last record says so), sign it, then move it aside for a new one."""
        self._put(*self._line({"event": ROTATE, "next_segment": self.segment + 1}, self.prev))
        os.fsync(self.fd)
        if self.checkpoint(self.seq, self.prev, self.segment):
            os.fsync(self.cp_fd)
        self._rename_and_reopen()

    def _rename_and_reopen(self) -> None:
        target = rotated_name(self.path, self.segment)
        if target.exists():
            raise FileExistsError(17, f"{target.name} already exists", str(target))
        os.rename(self.path, target)
        new_fd = open_append(self.path)
        fsync_dir(self.path.parent)
        os.close(self.fd)
        self.fd, self.segment, self.size = new_fd, self.segment + 1, 0

    def checkpoint(self, seq: int, mac: str, segment: int) -> bool:
        """Sign (seq, mac) of a record already on disk, unless a checkpoint already reaches it. The caller syncs."""
        self.refresh_checkpoints()
        cp = self.cp
        if cp.seq >= seq or seq == 0:
            return False
        prev = GENESIS if cp.restart else cp.cmac
        body: dict[str, Any] = {"n": cp.n + 1, "ts": round(time.time(), 6), "seq": seq, "mac": mac}
        body |= {"segment": segment, "key_id": self.key_id} | ({"restart": True} if cp.restart else {})
        cmac = checkpoint_mac(self.key, prev, body)
        line = canonical({**body, "prev": prev, "cmac": cmac}) + b"\n"
        if os.write(self.cp_fd, line) != len(line):
            with contextlib.suppress(OSError):
                os.ftruncate(self.cp_fd, cp.size)
            raise OSError(28, os.strerror(28))
        self.cp = CheckpointEnd(cp.n + 1, cmac, seq, cp.size + len(line), False)
        return True

    def close(self) -> None:
        for fd in (self.fd, self.cp_fd, self.lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.cp_fd = self.lock_fd = -1
