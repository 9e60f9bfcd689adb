"""Just enough HTTP/1.1 for loopback fakes: keep-alive, Content-Length bodies, chunked streams.

Hand-written rather than an ASGI app so a fake controls every byte and every
pause on the wire (dripping bodies, stalled headers, dropped connections).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import orjson

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Request:
    method: str
    path: str
    body: Any
    keep_alive: bool


@dataclass
class Reply:
    status: int = 200
    payload: Any = None
    lines: list[Any] | None = None  # NDJSON stream
    headers: dict[str, str] = field(default_factory=dict)


INVALID = object()


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    data = await reader.readexactly(int(headers.get("content-length", "0")))
    body: Any = None
    if data:
        try:
            body = json.loads(data)
        except ValueError:
            body = INVALID
    keep = headers.get("connection", "").lower() != "close" and version.strip() == "HTTP/1.1"
    return Request(method, target.split("?", 1)[0], body, keep)


async def write_response(
    writer: asyncio.StreamWriter, reply: Reply, keep_alive: bool, *, body: bytes | None = None, drip_s: float = 0.0
) -> None:
    head = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}"]
    head += [f"{k}: {v}" for k, v in reply.headers.items()]
    head.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    if reply.lines is not None and body is None:
        head += ["Content-Type: application/x-ndjson", "Transfer-Encoding: chunked"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        for item in reply.lines:
            chunk = json.dumps(item).encode() + b"\n"
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            await asyncio.sleep(drip_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return
    # a fast encoder keeps the fake's own cost out of what benchmarks measure
    data = body if body is not None else orjson.dumps(reply.payload)
    head += ["Content-Type: application/json; charset=utf-8", f"Content-Length: {len(data)}"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    if not drip_s:
        writer.write(data)
        await writer.drain()
        return
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(drip_s)


async def write_streamed(
    writer: asyncio.StreamWriter,
    status: int,
    chunks: Iterable[bytes],
    *,
    length: int | None = None,
    drip_s: float = 0.0,
) -> int:
    """A JSON body sent piece by piece (chunked unless `length` is declared); returns the body bytes sent.

    The pieces come from a generator, so a fake can send hundreds of MB without holding them; a client
    that stops reading ends the exchange with a connection error, which the caller treats as done.
    """
    # The connection is closed after such an answer; saying so keeps clients from reusing it.
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "Content-Type: application/json", "Connection: close"]
    head.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    sent = 0
    for chunk in chunks:
        writer.write(chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        sent += len(chunk)
        if drip_s:
            await asyncio.sleep(drip_s)
    if length is None:
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    return sent


def oversized_embeddings(size: int, piece: int = 1 << 16) -> Iterator[bytes]:
    """About `size` bytes of an Ollama-shaped embed answer: one vector of 0.125s, closed properly."""
    yield b'{"model":"m","embeddings":[['
    unit = b"0.125,"
    block = unit * (piece // len(unit))
    for _ in range(max(0, size - 40) // len(block)):
        yield block
    yield b"0.125]]}"


def oversized_length(size: int, piece: int = 1 << 16) -> int:
    """The exact length of `oversized_embeddings(size, piece)`."""
    block = len(b"0.125,") * (piece // len(b"0.125,"))
    return len(b'{"model":"m","embeddings":[[') + (max(0, size - 40) // block) * block + len(b"0.125]]}")


def wide_embeddings(count: int, dimensions: int, key: bytes = b"embeddings", piece: int = 1 << 16) -> Iterator[bytes]:
    """`count` vectors of `dimensions` zeros each, written compactly (2 bytes a dimension)."""
    yield b'{"model":"m","' + key + b'":['
    for row in range(count):
        yield b"[" if row == 0 else b",["
        left = dimensions - 1
        block = b"0," * (piece // 2)
        while left > 0:
            take = min(left, piece // 2)
            yield block[: take * 2]
            left -= take
        yield b"0]"
    yield b"]}"


def wide_body_length(count: int, dimensions: int, key: bytes = b"embeddings") -> int:
    """The exact length of `wide_embeddings(count, dimensions, key)`, for a declared Content-Length."""
    rows = count * (2 * dimensions + 1) + max(0, count - 1)
    return len(b'{"model":"m","":[]}') + len(key) + rows


class LoopbackServer:
    """A keep-alive HTTP/1.1 server on its own thread and event loop; subclasses implement `respond`.

    Its own loop means a handler that sleeps or drips bytes never blocks the test's loop,
    and `stop()` cancels such handlers instead of waiting them out.
    """

    def __init__(self) -> None:
        self.url = ""
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    async def respond(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether to keep the connection open."""
        raise NotImplementedError

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._thread = threading.Thread(target=self._run, args=(host, port), name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"{type(self).__name__} did not start: {self._error!r}")
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, host: str, port: int) -> None:
        try:
            asyncio.run(self.serve(host, port))
        except BaseException as exc:  # surfaced by start(); the thread must not die silently
            self._error = exc
            self._ready.set()

    async def serve(
        self, host: str, port: int, on_ready: Callable[[asyncio.AbstractEventLoop, asyncio.Event], None] | None = None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, host, port)
        bound = server.sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"
        self._ready.set()
        if on_ready is not None:
            on_ready(self._loop, self._stop)
        await self._stop.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while (req := await read_request(reader)) is not None:
                if not await self.respond(req, writer):
                    break
        except (ConnectionError, ValueError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
