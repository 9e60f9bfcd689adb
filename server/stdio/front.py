"""stdio fast start: answer the handshake from the previous run while the SDK imports.

Hosts spawn the server, then wait for `initialize` (or, at 2026-07-28,
`server/discover`) and `tools/list` (often `resources/list` and
`prompts/list` too) before they show its tools. Importing the
MCP SDK alone takes most of a second, yet those answers depend only on the
code, the installed SDK and the serve options. Every stdio run records its own
wire answers to them in `<cache dir>/stdio-handshake.json` under a fingerprint
of all three. The next start with the same fingerprint answers them from that
file at once (and `ping`), while a worker thread imports and builds the
server; everything else the client sends waits for the server.

At the handover the server is fed what it must know: a legacy `initialize`
(its second answer is dropped), `notifications/initialized`, and everything
queued. The requests answered from the file are replayed under private ids
and their real answers compared with the ones given: on a difference the file
is rewritten, a warning is logged and a client whose `initialize` answer
declared `listChanged` for that list is sent its `list_changed` notification.

Off with `serve --no-fast-start` or MODEL_GATEWAY_FAST_START=0. Standard
library only before the handover: this module runs before the SDK is imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import select
import stat
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

CACHE_FILE = "stdio-handshake.json"
FORMAT = 1
# what a host asks before it shows a server: each list's answer depends on the code alone
LISTS = {
    "tools/list": "tools",
    "resources/list": "resources",
    "resources/templates/list": "resources",
    "prompts/list": "prompts",
}
CACHEABLE = ("initialize", "server/discover", *LISTS)
PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
VERIFY_ID_PREFIX = "model-gateway/verify/"
# what decides the answers besides the code: these variables' values (secrets: only whether they are set)
_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")
# the SDK puts "jsonrpc" then "id" first in every response it writes
_RESPONSE_ID = re.compile(rb'^\{"jsonrpc":"2\.0","id":(-?\d+|"(?:[^"\\]|\\.)*")')
_NEEDLES = tuple(f'"{m}"'.encode() for m in CACHEABLE)
_SMALL = 1 << 20


def options(manifests: object, privacy_mode: object, metrics_port: object) -> list[str]:
    """The serve options that enter the fingerprint."""
    return [f"manifests={manifests}", f"privacy={privacy_mode}", f"metrics={metrics_port}"]


def enabled(flag_off: bool, env: Mapping[str, str]) -> bool:
    return not flag_off and env.get("MODEL_GATEWAY_FAST_START", "1").strip().lower() not in {"0", "false", "no", "off"}


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


class HandshakeCache:
    """The recorded answers: `method|protocol version` -> JSON-RPC result."""

    def __init__(self, path: Path, fingerprint: str, answers: dict[str, Any] | None = None) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.answers: dict[str, Any] = answers or {}

    @classmethod
    def load(cls, path: Path, fp: str) -> HandshakeCache:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return cls(path, fp)
        if not isinstance(data, dict) or data.get("fingerprint") != fp or not isinstance(data.get("answers"), dict):
            return cls(path, fp)
        return cls(path, fp, dict(data["answers"]))

    def save(self) -> None:
        """Atomically, readable by the owner only (it is trusted like the rest of the cache dir)."""
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps({"fingerprint": self.fingerprint, "answers": self.answers}))
            os.replace(tmp, self.path)
        except OSError as exc:
            _log().warning("stdio handshake cache not written: %s", exc.strerror or type(exc).__name__)


def _log() -> Any:
    import logging  # only when there is something to say: the fast start imports nothing it can avoid

    return logging.getLogger("model_gateway.stdio")


def key(method: str, version: str | None) -> str:
    return f"{method}|{version or '-'}"


def _meta_version(params: Any) -> str | None:
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


class Recorder:
    """Watches the wire after the handover: records answers to cacheable requests, checks the ones given early.

    `inbound` sees every line the server reads; `outbound` every line it writes, and returns
    what goes on the wire (private verification answers are dropped).
    """

    def __init__(
        self, cache: HandshakeCache, negotiated: str | None = None, list_changed: frozenset[str] = frozenset()
    ) -> None:
        self.cache = cache
        self.negotiated = negotiated  # legacy: the protocol version initialize settled on
        self.list_changed = list_changed  # capabilities the initialize answer declared `listChanged` for
        # request id -> (cache key, drop the answer, the answer already given from the cache)
        self.pending: dict[Any, tuple[str, bool, Any]] = {}
        self.changed: list[str] = []

    def expect(self, request_id: Any, cache_key: str, *, drop: bool, given: Any = None) -> None:
        self.pending[request_id] = (cache_key, drop, given)

    def inbound(self, line: bytes) -> None:
        head = line[:512]  # handshake requests are small; a large request is never one of them
        if not any(needle in head for needle in _NEEDLES):
            return
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict) or msg.get("method") not in CACHEABLE or "id" not in msg:
            return
        method, params = msg["method"], msg.get("params")
        if method in LISTS and isinstance(params, dict) and params.get("cursor") is not None:
            return  # a later page: only the first is kept
        if method == "initialize":
            requested = params.get("protocolVersion") if isinstance(params, dict) else None
            version = requested if isinstance(requested, str) else None
        else:
            version = _meta_version(params) or self.negotiated
        self.pending[_hashable(msg["id"])] = (key(method, version), False, None)

    def outbound(self, data: bytes) -> bytes | None:
        if not self.pending:
            return data
        m = _RESPONSE_ID.match(data)
        if m is not None:
            request_id = _hashable(json.loads(m.group(1)))
        elif len(data) <= _SMALL:  # another key order: handshake answers are small enough to parse
            try:
                msg = json.loads(data)
            except ValueError:
                return data
            if not isinstance(msg, dict) or "id" not in msg or "method" in msg:
                return data
            request_id = _hashable(msg["id"])
        else:
            return data
        entry = self.pending.pop(request_id, None)
        if entry is None:
            return data
        cache_key, drop, given = entry
        result = json.loads(data).get("result")
        extra = b""
        if isinstance(result, dict):
            if cache_key.startswith("initialize|") and isinstance(result.get("protocolVersion"), str):
                self.negotiated = result["protocolVersion"]
            if self.cache.answers.get(cache_key) != result:
                self.cache.answers[cache_key] = result
                self.cache.save()
            if given is not None and given != result:
                self.changed.append(cache_key)
                _log().warning("the cached answer to %s was stale: answered again and the cache rewritten", cache_key)
                capability = LISTS.get(cache_key.split("|", 1)[0])
                if capability in self.list_changed:
                    extra = f'{{"jsonrpc":"2.0","method":"notifications/{capability}/list_changed"}}\n'.encode()
        if drop:
            return extra or None
        return data + extra


def _hashable(value: Any) -> Any:
    return value if isinstance(value, str | int) else json.dumps(value)


class Handover:
    """What the front loop leaves for the server: lines to replay, bytes already read, the recorder."""

    def __init__(self, replay: list[tuple[bytes, bool]], pending: bytes, recorder: Recorder) -> None:
        self.replay = replay
        self.pending = pending
        self.recorder = recorder


class Front:
    """Answers the handshake from the cache until the server is ready; queues everything else."""

    def __init__(self, cache: HandshakeCache, out_fd: int) -> None:
        self.cache = cache
        self.out_fd = out_fd
        self.buf = bytearray()
        self.queue: list[tuple[bytes, bool]] = []
        self.init_line: bytes | None = None
        self.init_given: tuple[Any, str, Any] | None = None  # (id, cache key, answer)
        self.initialized_line: bytes | None = None
        self.negotiated: str | None = None
        self.answered: list[tuple[dict[str, Any], str, Any]] = []  # (request, cache key, answer)
        self.deferred = False  # after an unanswerable initialize, everything waits for the server

    def feed(self, data: bytes) -> None:
        scan = len(self.buf)
        self.buf += data
        start = 0
        while (end := self.buf.find(b"\n", scan)) >= 0:
            self._line(bytes(self.buf[start : end + 1]))
            start = scan = end + 1
        del self.buf[:start]

    def _line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        if self.deferred or not isinstance(msg, dict):
            self.queue.append((line, True))
            return
        method, params, request_id = msg.get("method"), msg.get("params"), msg.get("id")
        if method == "notifications/initialized" and self.init_given is not None:
            self.initialized_line = line
            return
        if method == "ping" and "id" in msg:
            self._send({"jsonrpc": "2.0", "id": request_id, "result": {}})
            return
        if method == "initialize" and "id" in msg and self.init_line is None:
            requested = params.get("protocolVersion") if isinstance(params, dict) else None
            cache_key = key("initialize", requested if isinstance(requested, str) else None)
            answer = self.cache.answers.get(cache_key)
            if not isinstance(answer, dict) or not isinstance(answer.get("protocolVersion"), str):
                self.deferred = True
                self.queue.append((line, True))
                return
            self.init_line, self.init_given = line, (request_id, cache_key, answer)
            self.negotiated = answer["protocolVersion"]
            self._send({"jsonrpc": "2.0", "id": request_id, "result": answer})
            return
        if (method == "server/discover" or method in LISTS) and "id" in msg:
            cursor = params.get("cursor") if isinstance(params, dict) else None
            version = _meta_version(params) or self.negotiated
            cache_key = key(method, version)
            answer = self.cache.answers.get(cache_key)
            if cursor is None and isinstance(answer, dict) and (version is not None or method == "server/discover"):
                self.answered.append((msg, cache_key, answer))
                self._send({"jsonrpc": "2.0", "id": request_id, "result": answer})
                return
        self.queue.append((line, True))

    def waiting(self) -> bool:
        """Whether anything the client sent still waits for the server."""
        return bool(self.queue) or bool(self.buf.strip())

    def _send(self, msg: dict[str, Any]) -> None:
        write_all(self.out_fd, json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def handover(self) -> Handover:
        answer = self.init_given[2] if self.init_given is not None else {}
        declared_caps = answer.get("capabilities")
        capabilities: dict[str, Any] = declared_caps if isinstance(declared_caps, dict) else {}
        announced = frozenset(
            name
            for name, declared in capabilities.items()
            if isinstance(declared, dict) and declared.get("listChanged") is True
        )
        recorder = Recorder(self.cache, self.negotiated, announced)
        replay: list[tuple[bytes, bool]] = []
        if self.init_line is not None and self.init_given is not None:
            request_id, cache_key, answer = self.init_given
            replay.append((self.init_line, False))
            recorder.expect(_hashable(request_id), cache_key, drop=True, given=answer)
            if self.initialized_line is not None:
                replay.append((self.initialized_line, False))
        for n, (request, cache_key, answer) in enumerate(self.answered):
            private = f"{VERIFY_ID_PREFIX}{n}"
            replay.append((json.dumps({**request, "id": private}).encode() + b"\n", False))
            recorder.expect(private, cache_key, drop=True, given=answer)
        replay.extend(self.queue)
        return Handover(replay, bytes(self.buf), recorder)


Prepared = Callable[[Handover, int, int], int]


def run(
    options: Sequence[str],
    env: Mapping[str, str],
    cache_dir: Path,
    prepare: Callable[[], Prepared],
    *,
    fast: bool,
) -> int:
    """Serve stdio: `prepare()` imports and builds the server and returns how to run it over the wire."""
    in_fd, out_fd = claim()
    cache = HandshakeCache.load(cache_dir / CACHE_FILE, fingerprint(options, env))
    if not fast or not cache.answers:
        serve = prepare()
        return serve(Handover([], b"", Recorder(cache)), in_fd, out_fd)
    front = Front(cache, out_fd)
    box: dict[str, Any] = {}
    done_r, done_w = os.pipe()

    def work() -> None:
        try:
            box["serve"] = prepare()
        except BaseException as exc:  # re-raised in the main thread
            box["error"] = exc
        finally:
            os.write(done_w, b".")

    threading.Thread(target=work, name="model-gateway-start", daemon=True).start()
    eof = False
    while True:
        ready, _, _ = select.select([done_r] if eof else [in_fd, done_r], [], [])
        if done_r in ready:
            break
        data = os.read(in_fd, 1 << 16)
        if data:
            try:
                front.feed(data)
            except BrokenPipeError:
                os._exit(0)  # the client closed its end before reading the answer
            continue
        eof = True
        if not front.waiting():
            os._exit(0)  # the client left with nothing left to answer; nothing was opened yet
    os.close(done_r)
    os.close(done_w)
    if "error" in box:
        raise box["error"]
    serve = box["serve"]
    return int(serve(front.handover(), in_fd, out_fd))


def claim() -> tuple[int, int]:
    """(in_fd, out_fd): private duplicates of the client's stdin/stdout; fd 0 -> /dev/null, fd 1 -> stderr.

    Where the system allows, both pipes grow to 1 MiB, so a large result or request crosses
    in one write instead of sixteen 64 KiB hand-offs between writer and reader.
    """
    in_fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    out_fd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    os.dup2(2, 1)
    for fd in (in_fd, out_fd):
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)  # Linux: a 64-vector result crosses in one write
    return in_fd, out_fd


def pollable(fd: int) -> bool:
    """Pipes and sockets can wait on the event loop; regular files and devices cannot."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
