"""The audit key: created complete or not at all, agreed on by concurrent first starts, never silently replaced.

A new key is written to a temp file, fsynced and published with a hard link
(`statefile.write_new`): a full disk leaves nothing behind, and of several
processes starting at once exactly one creates the key and the others read it.

The key protects a trail. A key file that is present but unusable (empty,
short, not hex, not ours or open to others) is replaced only when no trail
exists that it could have signed; otherwise it is an error naming the file, and
the sink refuses calls until the key is restored. A key that reads fine is
checked against the trail (the checkpoints' key id, the last records' MACs): a
mismatch is the same kind of error, so a wrong key never extends a trail.
The caller holds the trail's lock, so no other writer starts in between.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
import stat
from pathlib import Path

from server.audit_chain import checkpoint_mac, checkpoints_path, lines_backwards, parse_record, read_tail, segment_files
from server.errors import AuditUnavailableError
from server.statefile import warn_once, write_atomic, write_new

log = logging.getLogger("model_gateway.audit")
KEY_MAX_BYTES = 4096
MIN_KEY_BYTES = 16
_EVIDENCE_LINES = 8  # how many lines from each file's end are consulted about the key


def parse_key(text: str, where: str, *, hex_only: bool = False) -> bytes:
    """Hex (as the gateway writes key files), or for a setting also raw text, of at least 16 bytes."""
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        if hex_only:
            raise AuditUnavailableError(f"{where} does not hold a hex key") from None
        key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise AuditUnavailableError(f"{where} holds fewer than {MIN_KEY_BYTES} bytes of key")
    return key


def read_key_file(path: Path) -> bytes:
    """The key in `path` for reading a trail (the verifier): no creation, no repair; errors name the file."""
    try:
        text = path.read_bytes()[:KEY_MAX_BYTES].decode("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditUnavailableError(f"audit key file {path} cannot be read ({type(exc).__name__})") from exc
    return parse_key(text, f"audit key file {path}", hex_only=True)


def load_or_create_key(key_hex: str | None, key_path: Path, log_path: Path | None = None) -> bytes:
    """The key for the trail at `log_path`: from settings, else the key file, created on a first start."""
    if key_hex:
        key = parse_key(key_hex, "MODEL_GATEWAY_AUDIT_KEY")
        _check_against_trail(key, "MODEL_GATEWAY_AUDIT_KEY", log_path)
        return key
    for _ in range(3):  # a concurrent creator may publish between our look and our link
        found = _inspect(key_path, log_path)
        if isinstance(found, bytes):
            _check_against_trail(found, f"audit key file {key_path}", log_path)
            return found
        if log_path is not None and _trail_exists(log_path):
            state = "missing" if found == "missing" else f"unusable ({found})"
            raise AuditUnavailableError(
                f"audit key file {key_path} is {state} but the audit log at {log_path} was signed with a key: "
                "restore the key file (or set MODEL_GATEWAY_AUDIT_KEY), or move the log aside to start a new trail"
            )
        key = secrets.token_bytes(32)
        data = (key.hex() + "\n").encode()
        if found == "missing":
            if not write_new(key_path, data):
                continue
        else:
            warn_once(log.name, key_path, found, "replaced: no audit trail depends on it")
            write_atomic(key_path, data)
        log.warning("generated a new audit key at %s; keep a copy elsewhere to verify this log later", key_path)
        return key
    raise AuditUnavailableError(f"audit key file {key_path} keeps changing under concurrent starts")


def _inspect(path: Path, log_path: Path | None) -> bytes | str:
    """The key if the file holds a usable one we can trust (modes repaired), else why not ("missing", a reason)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be opened ({exc.strerror or type(exc).__name__})"
    try:
        st = os.fstat(fd)
        raw = os.read(fd, KEY_MAX_BYTES + 1) if stat.S_ISREG(st.st_mode) else b""
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        key = parse_key(raw.decode("ascii"), "the file", hex_only=True) if len(raw) <= KEY_MAX_BYTES else None
    except (UnicodeDecodeError, AuditUnavailableError):
        key = None
    if key is None:
        return "not a key" if raw.strip() else "empty"
    if st.st_uid == os.geteuid() and not st.st_mode & 0o077:
        return key
    return _adopt(path, key, st, log_path)


def _adopt(path: Path, key: bytes, st: os.stat_result, log_path: Path | None) -> bytes | str:
    """A readable key that is not ours or is open to others."""
    ours = st.st_uid == os.geteuid()
    why = f"owned by uid {st.st_uid}" if not ours else f"mode {stat.S_IMODE(st.st_mode):04o}"
    if not ours or st.st_mode & 0o022:
        # anyone could have written it: it is the key only when the trail's MACs say so
        if log_path is None or _matches(key, log_path) is not True:
            return f"untrusted: {why}"
        warn_once(log.name, path, f"untrusted ({why}) but it signs the audit trail", "rewritten as ours, 0600")
        write_atomic(path, (key.hex() + "\n").encode())
        return key
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    warn_once(log.name, path, f"readable by others ({why})", "closed to 0600; consider starting a new trail")
    return key


def _check_against_trail(key: bytes, what: str, log_path: Path | None) -> None:
    if log_path is not None and _matches(key, log_path) is False:
        raise AuditUnavailableError(
            f"{what} does not match the audit log at {log_path} (it was signed with another key): "
            "restore the key that signed it, or move the log aside to start a new trail"
        )


def _trail_exists(log_path: Path) -> bool:
    """Whether any complete record or checkpoint line exists (torn bytes alone were never acknowledged)."""
    return any(_last_lines(p, 1) for p in [*(p for _, p in segment_files(log_path)), checkpoints_path(log_path)])


def _matches(key: bytes, log_path: Path) -> bool | None:
    """Whether `key` signed the trail's last lines (checkpoints, then records); None when no line can say."""
    said: bool | None = None
    for line in _last_lines(checkpoints_path(log_path), _EVIDENCE_LINES):
        verdict = _checkpoint_signed(key, line)
        if verdict is not None:
            if verdict:
                return True
            said = False
    for _, segment in reversed(segment_files(log_path)):
        lines = _last_lines(segment, _EVIDENCE_LINES)
        for line in lines:
            rec = parse_record(line, key)
            if rec is not None:
                if rec.authentic:
                    return True
                said = False
        if lines:
            break
    return said


def _checkpoint_signed(key: bytes, line: bytes) -> bool | None:
    try:
        cp = json.loads(line)
        body = {k: v for k, v in cp.items() if k not in ("prev", "cmac")}
        return hmac.compare_digest(checkpoint_mac(key, str(cp["prev"]), body), str(cp["cmac"]))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def _last_lines(path: Path, limit: int) -> list[bytes]:
    """Up to `limit` complete lines from the end of `path` (a torn tail is skipped), last first."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        tail = read_tail(fd, os.fstat(fd).st_size)
        if tail.line is None:
            return []
        found = []
        for _, line in lines_backwards(fd, tail.line_start + len(tail.line) + 1):
            found.append(line)
            if len(found) >= limit:
                break
        return found
    finally:
        os.close(fd)
