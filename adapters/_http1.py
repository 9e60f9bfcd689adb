"""A lean HTTP/1.1 client for plain-http upstreams: kept-alive sockets, strict parsing, bounded reads.

A kept-alive loopback POST through httpx2 costs ~0.6 ms of CPU in its request and response
machinery (URL and header models, the h11 state machine, the pool's events, the anyio stream
wrappers); written and parsed here the same exchange costs about a sixth of that. It speaks
only what the adapters send: one request at a time per connection, a body given whole, and
answers framed by Content-Length, by chunks, or by the end of the connection (never reused).

Parsing is strict: a status line `HTTP/1.x NNN`, header names that are tokens, no folded or
NUL-carrying lines, one Content-Length (or Transfer-Encoding: chunked, never both), no content
coding (identity is asked for), at most MAX_HEAD_BYTES of head and MAX_HEADERS lines. Anything
else is a `TransportError` of kind RemoteProtocolError, and the connection is dropped.

The limits are the adapter limits, read as the httpx2 client reads them: connect within
`connect_timeout_s`; each write, each wait for bytes and each wait for a free connection within
`read_timeout_s`; at most `max_connections` open, `max_keepalive_connections` kept idle for up
to `keepalive_expiry_s`. An idle
connection the upstream closed (or wrote to unasked) is noticed before reuse and replaced.
The caller bounds the body's size as it reads (`Answer.read` hands it over as it arrives).
https and HTTP/2 stay with httpx2 (adapters/_http.py).
"""

from __future__ import annotations

import errno
import re
import socket
import time
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

import anyio

from adapters.base import AdapterLimits

MAX_HEAD_BYTES = 64 << 10  # status line and headers of one answer
MAX_HEADERS = 128
MAX_LINE_BYTES = 4 << 10  # one chunk-size line, one trailer line
RECV_BYTES = 1 << 16
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [^\r\n\x00]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n\x00]*)?")
_PATH = re.compile(r"/[!-~]*")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")


class TransportError(Exception):
    """A failure below HTTP semantics; `kind` is named as httpx2 names it (ReadTimeout, ConnectError, ...)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind

    @property
    def timeout(self) -> bool:
        return self.kind.endswith("Timeout")


def _protocol(detail: str) -> TransportError:
    return TransportError("RemoteProtocolError", detail)


def usable(base_url: str) -> bool:
    """Whether this client can serve `base_url`: plain http, no credentials, query or fragment in it."""
    parts = urlsplit(base_url)
    return parts.scheme.lower() == "http" and bool(parts.hostname) and not (parts.username or parts.query)


def fixed_headers(host: str, extra: Mapping[str, str]) -> bytes:
    """The header lines every request carries; the adapter's headers replace the defaults of the same name."""
    lines = {"host": ("Host", host), "accept": ("Accept", "*/*"), "accept-encoding": ("Accept-Encoding", "identity")}
    lines["user-agent"] = ("User-Agent", "model-gateway")
    for name, value in extra.items():
        if not _TOKEN.fullmatch(name.encode("latin-1")) or _BAD_VALUE.search(value.encode("latin-1")):
            raise ValueError(f"header {name!r} is not a valid HTTP header")
        lines[name.lower()] = (name, value)
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in lines.values())


class _Conn:
    __slots__ = ("buf", "idle_since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.idle_since = 0.0

    def reusable(self, now: float, expiry_s: float) -> bool:
        """Kept alive, and neither closed nor written to by the upstream while idle."""
        if now - self.idle_since > expiry_s:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    async def send(self, data: bytes, timeout_s: float) -> None:
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[self.sock.send(view) :]
                except BlockingIOError:
                    with anyio.fail_after(timeout_s):
                        await anyio.wait_writable(self.sock)
        except TimeoutError:
            raise TransportError("WriteTimeout") from None
        except OSError as exc:
            raise TransportError("WriteError", exc.strerror or "") from exc

    async def fill(self, timeout_s: float) -> bool:
        """Wait for more bytes (always through the event loop, so a fast sender cannot starve it); False at EOF."""
        while True:
            try:
                with anyio.fail_after(timeout_s):
                    await anyio.wait_readable(self.sock)
                data = self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except TimeoutError:
                raise TransportError("ReadTimeout") from None
            except OSError as exc:
                raise TransportError("ReadError", exc.strerror or "") from exc
            self.buf += data
            return bool(data)

    async def line(self, timeout_s: float) -> bytes:
        """One CRLF-ended line of a chunked body, without its CRLF."""
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_LINE_BYTES:
                raise _protocol(f"a chunk line exceeds {MAX_LINE_BYTES} bytes")
            if not await self.fill(timeout_s):
                raise _protocol("the answer ended inside its chunks")
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def close(self) -> None:
        self.sock.close()


class Pool:
    """Pooled keep-alive connections to one upstream; `request` returns its `Answer` with the head read."""

    def __init__(self, base_url: str, headers: Mapping[str, str], limits: AdapterLimits) -> None:
        parts = urlsplit(base_url)
        self._address = (parts.hostname or "", parts.port or 80)
        self._prefix = parts.path.rstrip("/")
        self._fixed = fixed_headers(parts.netloc, headers)
        self._connect_timeout_s = limits.connect_timeout_s
        self.read_timeout_s = limits.read_timeout_s
        self._slots = anyio.Semaphore(limits.max_connections)
        self._max_keepalive = limits.max_keepalive_connections
        self._expiry_s = limits.keepalive_expiry_s
        self._idle: deque[_Conn] = deque()
        self._closed = False

    async def request(self, method: str, path: str, body: bytes | None, kind: str = "application/json") -> Answer:
        if not _PATH.fullmatch(path) or not method.isalpha():
            raise ValueError(f"not a request this client sends: {method} {path!r}")
        head = f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("ascii") + self._fixed
        if body is not None:
            head += f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n".encode("latin-1")
        data = head + b"\r\n" + (body or b"")
        await self._take_slot()
        try:
            conn = self._reused() or await self._connect()
        except BaseException:
            self._slots.release()
            raise
        answer = Answer(self, conn)
        try:
            await conn.send(data, self.read_timeout_s)
            await answer.read_head(method)
        except BaseException:
            answer.discard()
            raise
        return answer

    async def _take_slot(self) -> None:
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(self.read_timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise TransportError("PoolTimeout") from None

    def _reused(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the one least likely to have been dropped
            if conn.reusable(now, self._expiry_s):
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Conn:
        host, port = self._address
        failure = "no address"
        try:
            with anyio.fail_after(self._connect_timeout_s):
                for family, kind, proto, _, address in await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                    sock = socket.socket(family, kind, proto)
                    try:
                        await _connect_socket(sock, address)
                    except OSError as exc:
                        sock.close()
                        failure = exc.strerror or type(exc).__name__
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    return _Conn(sock)
        except TimeoutError:
            raise TransportError("ConnectTimeout") from None
        except OSError as exc:  # the name did not resolve
            raise TransportError("ConnectError", exc.strerror or type(exc).__name__) from exc
        raise TransportError("ConnectError", failure)

    def release(self, conn: _Conn, keep: bool) -> None:
        if keep and not self._closed and len(self._idle) < self._max_keepalive:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    def close(self) -> None:
        """Idle connections close now; those in use close when their answers are released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


async def _connect_socket(sock: socket.socket, address: tuple[str, int] | tuple[str, int, int, int]) -> None:
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code in (errno.EINPROGRESS, errno.EAGAIN):
        await anyio.wait_writable(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, errno.errorcode.get(code, "connect failed"))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Answer:
    """One answer: `status` and `headers` (names lower-cased) once the head is read; `read()` gives the body
    piece by piece as it arrives (b"" at its end); `aclose()` returns the connection to the pool when the
    whole body was read and the upstream keeps it alive, and closes it otherwise."""

    def __init__(self, pool: Pool, conn: _Conn) -> None:
        self._pool = pool
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._left: int | None = 0  # body bytes still to come; None: until the connection ends
        self._chunked = False
        self._keep = False
        self._done = False
        self._released = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    async def read_head(self, method: str) -> None:
        conn, timeout_s = self._conn, self._pool.read_timeout_s
        while True:
            while (end := conn.buf.find(b"\r\n\r\n")) < 0:
                if len(conn.buf) > MAX_HEAD_BYTES:
                    raise _protocol(f"the answer's head exceeds {MAX_HEAD_BYTES} bytes")
                if not await conn.fill(timeout_s):
                    raise _protocol("the server closed the connection " + ("mid-head" if conn.buf else "unanswered"))
            if end > MAX_HEAD_BYTES:
                raise _protocol(f"the answer's head exceeds {MAX_HEAD_BYTES} bytes")
            head = bytes(conn.buf[:end])
            del conn.buf[: end + 4]
            self.status, keep, self.headers = parse_head(head)
            if not 100 <= self.status < 200:
                break
            if self.status == 101:
                raise _protocol("the server switched protocols")
        self._frame(method, keep)

    def _frame(self, method: str, keep: bool) -> None:
        headers = self.headers
        if headers.get("content-encoding", "identity").strip().lower() != "identity":
            raise _protocol("the answer has a content coding (identity was asked for)")
        self._keep = keep and "close" not in headers.get("connection", "").lower()
        length, coding = headers.get("content-length"), headers.get("transfer-encoding")
        if method == "HEAD" or self.status in (204, 304):
            self._left = 0
        elif coding is not None:
            if length is not None or coding.strip().lower() != "chunked":
                raise _protocol("unsupported framing: Transfer-Encoding other than chunked, or with Content-Length")
            self._chunked, self._left = True, 0
        elif length is not None:
            if not (length.isascii() and length.isdigit() and len(length) <= 18):
                raise _protocol("Content-Length is not a number")
            self._left = int(length)
        else:
            self._left, self._keep = None, False
        self._done = self._left == 0 and not self._chunked

    async def read(self) -> bytes:
        if self._done:
            return b""
        if self._chunked:
            return await self._read_chunk()
        conn = self._conn
        if not conn.buf and not await conn.fill(self._pool.read_timeout_s):
            if self._left is not None:
                raise _protocol("the answer ended before its Content-Length")
            self._done = True
            return b""
        take = len(conn.buf) if self._left is None else min(self._left, len(conn.buf))
        piece = bytes(conn.buf[:take])
        del conn.buf[:take]
        if self._left is not None:
            self._left -= take
            self._done = self._left == 0
        return piece

    async def _read_chunk(self) -> bytes:
        conn, timeout_s = self._conn, self._pool.read_timeout_s
        if self._left == 0:  # at a chunk-size line
            found = _CHUNK_SIZE.fullmatch(await conn.line(timeout_s))
            if found is None:
                raise _protocol("a malformed chunk-size line")
            size = int(found.group(1), 16)
            if size == 0:
                await self._trailers()
                return b""
            self._left = size
        if not conn.buf and not await conn.fill(timeout_s):
            raise _protocol("the answer ended inside a chunk")
        left = self._left or 0
        take = min(left, len(conn.buf))
        piece = bytes(conn.buf[:take])
        del conn.buf[:take]
        self._left = left - take
        if self._left == 0 and await conn.line(timeout_s):
            raise _protocol("a chunk longer than its size")
        return piece

    async def _trailers(self) -> None:
        for _ in range(MAX_HEADERS):
            if not await self._conn.line(self._pool.read_timeout_s):
                self._done = True
                return
        raise _protocol(f"more than {MAX_HEADERS} trailer lines")

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            # bytes past the body would be read as the next answer's head: such a connection is not reused
            self._pool.release(self._conn, keep=self._done and self._keep and not self._conn.buf)

    def discard(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._conn, keep=False)


def parse_head(head: bytes) -> tuple[int, bool, dict[str, str]]:
    """(status, whether HTTP/1.1 keeps the connection by default, headers with lower-cased names)."""
    lines = head.split(b"\r\n")
    found = _STATUS.fullmatch(lines[0])
    if found is None:
        raise _protocol("a malformed status line")
    if len(lines) > MAX_HEADERS + 1:
        raise _protocol(f"more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, raw = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(raw):
            raise _protocol("a malformed header line")
        key, value = name.decode("ascii").lower(), raw.strip(b" \t").decode("latin-1")
        if key not in headers:
            headers[key] = value
        elif key == "content-length":
            if headers[key] != value:
                raise _protocol("conflicting Content-Length values")
        else:
            headers[key] = f"{headers[key]}, {value}"
    return int(found.group(2)), found.group(1) == b"1", headers
