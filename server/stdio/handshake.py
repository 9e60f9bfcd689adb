"""The handshake cache: the server's own answers to the requests hosts send first, kept for the next start.

Those answers (`initialize`, `server/discover`, the tool, resource, template and prompt lists)
depend only on the code, the installed SDK, Python and the serve options; a fingerprint of all
of them keys the file. A cached answer is served only when it is provably this server's own:

- the file carries an HMAC-SHA256 over its payload under a key only this user can read
  (`stdio-handshake.key`, 32 random bytes, created 0600 in the 0700 cache folder, complete or
  not at all: written to a temp file, fsynced, then linked into place, so concurrent first
  starts agree on one key);
- the MAC is checked before a byte of the payload is parsed, then the payload is parsed by
  the bounded parser and checked against a schema and the fingerprint.

Anything else (tampered, truncated, ill-shaped, foreign-owned, writable or readable by others,
another format, another fingerprint) is ignored, logged once, and rewritten from the server's
real answers; it never stops a start. Every read and write goes through `server.statefile`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from server.jsonparse import JSONParseError, parse
from server.statefile import UntrustedFileError, read_owned, warn_once, write_atomic

CACHE_FILE = "stdio-handshake.json"
KEY_FILE = "stdio-handshake.key"
FORMAT = 2
MAX_FILE_BYTES = 4 * 1024 * 1024
LOGGER = "model_gateway.stdio"
# what a host asks before it shows a server: each list's answer depends on the code alone
LISTS = {
    "tools/list": ("tools", "tools"),  # method -> (capability, the list's key in the result)
    "resources/list": ("resources", "resources"),
    "resources/templates/list": ("resources", "resourceTemplates"),
    "prompts/list": ("prompts", "prompts"),
}
CACHEABLE = ("initialize", "server/discover", *LISTS)
PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")
_HEADER = re.compile(rb"^model-gateway-stdio-handshake ([0-9]+) ([0-9a-f]{64})\n")
_KEY_TEXT = re.compile(rb"^[0-9a-f]{64}\n?$")


def options(manifests: object, privacy_mode: object, metrics_port: object) -> list[str]:
    """The serve options that enter the fingerprint."""
    return [f"manifests={manifests}", f"privacy={privacy_mode}", f"metrics={metrics_port}"]


def fingerprint(options: Sequence[str], env: Mapping[str, str]) -> str:
    """Everything the handshake answers depend on: code (ours and the SDK's), Python, options, environment."""
    h = hashlib.sha256(f"{FORMAT}\0{sys.version}\0{sys.executable}\0".encode())
    h.update("\0".join(options).encode())
    for name in sorted(k for k in env if k.startswith("MODEL_GATEWAY_")):
        secret = any(word in name for word in _SECRET_WORDS)
        h.update(f"\0{name}={'<set>' if secret else env[name]}".encode())
    for package in ("server", "adapters", "mcp", "mcp_types", "pydantic", "pydantic_core"):
        _hash_tree(h, package)
    return h.hexdigest()


def _hash_tree(h: Any, package: str) -> None:
    """Names, sizes and mtimes of a package's files (stat only: ~1 ms for the SDK)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    h.update(f"\0{package}:{len(roots)}".encode())
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith((".py", ".so", ".json")):
                    st = os.stat(os.path.join(dirpath, name))
                    h.update(f"\0{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}".encode())


def key(method: str, version: str | None) -> str:
    """The cache key of one answer: method and protocol version."""
    return f"{method}|{version or '-'}"


def meta_version(params: object) -> str | None:
    """The protocol version a 2026-era request carries in its `_meta` envelope."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


class HandshakeCache:
    """The recorded answers (`method|protocol version` -> JSON-RPC result) and how to keep them."""

    def __init__(
        self, path: Path, fingerprint: str, secret: bytes | None, answers: dict[str, Any] | None = None
    ) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self._secret = secret  # None: no usable key, so nothing is served from or saved to the file
        self.answers: dict[str, Any] = answers or {}

    @classmethod
    def load(cls, cache_dir: Path, fp: str) -> HandshakeCache:
        """The cache for this fingerprint; empty when the file is missing or cannot be trusted."""
        path = cache_dir / CACHE_FILE
        secret = _secret(cache_dir / KEY_FILE)
        if secret is None:
            return cls(path, fp, None)
        try:
            data = read_owned(path, MAX_FILE_BYTES)
        except UntrustedFileError as exc:
            warn_once(LOGGER, path, exc.reason)
            return cls(path, fp, secret)
        answers = _verified(path, data, secret, fp) if data is not None else None
        return cls(path, fp, secret, answers)

    def save(self) -> None:
        """Atomically, 0600, signed. A failure costs the next start its head start, nothing more."""
        if self._secret is None:
            return
        payload = json.dumps({"fingerprint": self.fingerprint, "answers": self.answers}, separators=(",", ":"))
        body = payload.encode()
        mac = hmac.new(self._secret, b"%d\0" % FORMAT + body, hashlib.sha256).hexdigest()
        try:
            write_atomic(self.path, f"model-gateway-stdio-handshake {FORMAT} {mac}\n".encode() + body)
        except OSError as exc:
            warn_once(LOGGER, self.path, f"not written ({exc.strerror or type(exc).__name__})", "left as it was")


def _verified(path: Path, data: bytes, secret: bytes, fp: str) -> dict[str, Any] | None:
    header = _HEADER.match(data)
    if header is None or int(header.group(1)) != FORMAT:
        warn_once(LOGGER, path, "another format or a damaged header")
        return None
    body = data[header.end() :]
    mac = hmac.new(secret, b"%d\0" % FORMAT + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac.encode(), header.group(2)):
        warn_once(LOGGER, path, "its signature does not match (changed since this server wrote it)")
        return None
    try:
        value = parse(body)
    except JSONParseError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("fingerprint"), str) and value["fingerprint"] != fp:
        return None  # recorded by other code or other options: the usual reason after an upgrade
    answers = _answers_of(value, fp)
    if answers is None:
        warn_once(LOGGER, path, "signed, but not of the expected shape")
    return answers


def _answers_of(value: object, fp: str) -> dict[str, Any] | None:
    if not isinstance(value, dict) or value.get("fingerprint") != fp or not isinstance(value.get("answers"), dict):
        return None
    answers: dict[str, Any] = value["answers"]
    for cache_key, answer in answers.items():
        method = cache_key.split("|", 1)[0]
        if method not in CACHEABLE or not well_formed(method, answer):
            return None
    return answers


def well_formed(method: str, answer: object) -> bool:
    """The shape a host relies on for each cached answer."""
    if not isinstance(answer, dict):
        return False
    if method == "initialize":
        return (
            isinstance(answer.get("protocolVersion"), str)
            and isinstance(answer.get("capabilities"), dict)
            and isinstance(answer.get("serverInfo"), dict)
        )
    if method == "server/discover":
        return isinstance(answer.get("supportedVersions"), list)
    return isinstance(answer.get(LISTS[method][1]), list)


def _secret(path: Path) -> bytes | None:
    """This user's key; created (or replaced, when it cannot be trusted) as needed; None when impossible."""
    try:
        data = read_owned(path, 256)
        if data is not None and _KEY_TEXT.match(data) and not os.stat(path).st_mode & 0o077:
            return bytes.fromhex(data[:64].decode())
        if data is not None:
            warn_once(LOGGER, path, "not a key this user alone can read", "replaced by a new key")
            return _write_key(path, replace=True)
        return _write_key(path, replace=False)
    except UntrustedFileError as exc:
        warn_once(LOGGER, path, exc.reason, "replaced by a new key")
        try:
            return _write_key(path, replace=True)
        except OSError:
            return None
    except OSError as exc:
        warn_once(LOGGER, path, f"unusable ({exc.strerror or type(exc).__name__})", "the fast start is off")
        return None


def _write_key(path: Path, *, replace: bool) -> bytes | None:
    text = os.urandom(32).hex().encode() + b"\n"
    if replace:
        write_atomic(path, text)
        return bytes.fromhex(text[:64].decode())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    write_atomic(tmp, text)
    try:
        os.link(tmp, path)  # never replaces: the first writer's key wins and every process reads it
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    data = read_owned(path, 256)
    return bytes.fromhex(data[:64].decode()) if data is not None and _KEY_TEXT.match(data) else None
