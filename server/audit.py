"""Append-only JSONL audit trail with a keyed (HMAC-SHA256) chain and group commit.

Each line is one record; its `mac` covers the record's canonical JSON and the
previous record's mac, keyed with a secret the log never contains, so an edit,
deletion, insertion or reordering breaks verification. Raw prompts, texts and
secrets never enter a record: only sha256 evidence of the canonical request
and response (unless the manifest opts in to content capture).

Durability: `write()` returns once the record is on disk under the configured
fsync policy — `always` (fsync per record), `group` (one fsync per group-commit
window shared by every record written in it), `never` (flush only).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import anyio

from server.errors import AuditUnavailableError

log = logging.getLogger("model_gateway.audit")

FsyncMode = Literal["always", "group", "never"]
GENESIS = "0" * 64


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def evidence(value: Any) -> str:
    """sha256 of the canonical JSON of a request or response."""
    return hashlib.sha256(canonical(value)).hexdigest()


def record_mac(key: bytes, prev: str, body: Mapping[str, Any]) -> str:
    return hmac.new(key, prev.encode() + b"\n" + canonical(body), hashlib.sha256).hexdigest()


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
        return bytes.fromhex(key_path.read_text(encoding="ascii").strip())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    log.warning("generated a new audit key at %s; back it up to verify this log later", key_path)
    return bytes.fromhex(key_path.read_text(encoding="ascii").strip())


def _last_record(path: Path) -> tuple[int, str]:
    """(last seq, last mac) of an existing log, so the chain continues across restarts."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return 0, GENESIS
    for raw in reversed(lines):
        try:
            rec = json.loads(raw)
            return int(rec["seq"]), str(rec["mac"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line: the verifier reports it
    return 0, GENESIS


class AuditLog:
    def __init__(self, path: Path, key: bytes, fsync: FsyncMode = "group", group_commit_ms: float = 5.0) -> None:
        self.path = path
        self._key = key
        self.fsync = fsync
        self.group_commit_s = group_commit_ms / 1000
        self.error: str | None = None
        self.records = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.seq, self._prev = _last_record(path)
        self._fh = path.open("ab", buffering=0)
        self._written_gen = 0
        self._synced_gen = 0
        self._sync_done: anyio.Event | None = None
        self._leader = False

    @property
    def healthy(self) -> bool:
        return self.error is None

    def _append(self, body: dict[str, Any]) -> None:
        self.seq += 1
        body = {"seq": self.seq, "ts": round(time.time(), 6), **body}
        mac = record_mac(self._key, self._prev, body)
        line = canonical({**body, "prev": self._prev, "mac": mac}) + b"\n"
        try:
            self._fh.write(line)
        except OSError as exc:
            self.seq -= 1
            self.error = f"audit log not writable: {exc.strerror or type(exc).__name__}"
            raise AuditUnavailableError(f"call refused: {self.error}") from exc
        self._prev = mac
        self.records += 1
        self._written_gen += 1

    async def write(self, body: dict[str, Any]) -> None:
        """Append one record; returns when it is durable under the fsync policy."""
        if self.error is not None:
            raise AuditUnavailableError(f"call refused: {self.error}")
        self._append(body)
        if self.fsync == "always":
            await self._fsync()
        elif self.fsync == "group":
            await self._group_commit(self._written_gen)

    async def _fsync(self) -> None:
        try:
            await anyio.to_thread.run_sync(os.fsync, self._fh.fileno())
        except OSError as exc:
            self.error = f"audit log fsync failed: {exc.strerror or type(exc).__name__}"
            raise AuditUnavailableError(f"call refused: {self.error}") from exc

    async def _group_commit(self, gen: int) -> None:
        while self._synced_gen < gen:
            if self._leader:
                assert self._sync_done is not None
                await self._sync_done.wait()
                continue
            self._leader = True
            self._sync_done = anyio.Event()
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(self.group_commit_s)
                    target = self._written_gen
                    await self._fsync()
                    self._synced_gen = target
            finally:
                self._leader = False
                self._sync_done.set()

    def aclose_sync(self) -> None:
        if not self._fh.closed:
            with contextlib.suppress(OSError):
                os.fsync(self._fh.fileno())
            self._fh.close()

    async def aclose(self) -> None:
        self.aclose_sync()
