"""A real loopback OpenAI-compatible server for adapter tests.

Speaks HTTP/1.1 with keep-alive over a real socket, so tests see what only
sockets show: connection reuse, refused connections, streamed SSE bodies.

Routes: POST /v1/embeddings (float and base64), POST /v1/chat/completions
(plain and SSE streaming with ": keepalive" comment lines), POST /v1/rerank
(Cohere style), POST /rerank (TEI style), GET /v1/models.

Fault injection: `fail_next(path, status, ...)` queues answers for a path
(a body may contain "{auth}", replaced by the Authorization header received,
to imitate providers that echo the key), `malformed_next(path)` answers 200
with a body that is not JSON, `huge_next(path, size_bytes=…)` an answer of that
many bytes, `huge_next(path, dimensions=…)` embeddings that wide (both generated
while sent, never held), and `drip_next(path, interval_s)` the real answer one
byte per interval. Counters: `requests` (every request seen) and
`connections` (TCP connections accepted).

In-process: `with FakeOpenAI(api_key="k") as fake: fake.url`. Standalone:
`python -m tests.support.fake_openai --port N [--api-key K]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import struct
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support.http1 import write_streamed

DIMENSIONS = 8


def toy_vector(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """A deterministic, L2-normalised vector; float32-exact so base64 round trips compare equal."""
    digest = hashlib.sha256(text.encode()).digest() * (dimensions // 32 + 1)
    raw = [(b - 127.5) / 127.5 for b in digest[:dimensions]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in raw]


def overlap_score(query: str, document: str) -> float:
    q = set(query.lower().split())
    return len(q & set(document.lower().split())) / (len(q) or 1)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass(frozen=True)
class Huge:
    """An answer generated while it is sent: `size_bytes` of one long vector, or vectors `dimensions` wide."""

    size_bytes: int = 0
    dimensions: int = 0


@dataclass(frozen=True)
class Drip:
    interval_s: float


class FakeOpenAI:
    def __init__(self, *, api_key: str | None = None, port: int = 0, models: tuple[str, ...] = ("toy-chat",)) -> None:
        self.api_key = api_key
        self.models = models
        self.requests: list[Recorded] = []
        self.connections = 0
        self._port = port
        self._faults: dict[str, deque[Answer | Huge | Drip]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- control ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def fail_next(
        self, path: str, status: int, *, body: str = "", headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        payload = body or json.dumps({"error": {"message": f"injected HTTP {status}"}})
        with self._lock:
            for _ in range(times):
                self._faults.setdefault(path, deque()).append(Answer(status, payload.encode(), dict(headers or {})))

    def malformed_next(self, path: str) -> None:
        with self._lock:
            self._faults.setdefault(path, deque()).append(Answer(200, b'{"object": "list", "data": [tru'))

    def huge_next(self, path: str, *, size_bytes: int = 0, dimensions: int = 0) -> None:
        with self._lock:
            self._faults.setdefault(path, deque()).append(Huge(size_bytes, dimensions))

    def drip_next(self, path: str, interval_s: float) -> None:
        with self._lock:
            self._faults.setdefault(path, deque()).append(Drip(interval_s))

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path == path)

    def start(self) -> FakeOpenAI:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    async def _shutdown(self) -> None:
        # Closing the sockets lets every connection handler see EOF and return on its own.
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for _ in range(10):
            if not self._writers:
                break
            await asyncio.sleep(0.01)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving ----------------------------------------------------------------

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self._port))
        self._server = server
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        self._writers.add(writer)
        try:
            await self._exchange(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while (request := await _read_request(reader)) is not None:
                with self._lock:
                    self.requests.append(request)
                    queued = self._faults.get(request.path)
                    fault = queued.popleft() if queued else None
                if isinstance(fault, Huge):
                    await _write_huge(writer, request, fault)
                    return
                if isinstance(fault, Drip):
                    answer = self._route(request)
                    await _write(writer, answer, drip_s=fault.interval_s)
                elif fault is not None:
                    auth = request.headers.get("authorization", "")
                    await _write(
                        writer, Answer(fault.status, fault.body.replace(b"{auth}", auth.encode()), fault.headers)
                    )
                elif (denied := self._denied(request)) is not None:
                    await _write(writer, denied)
                elif request.path == "/v1/chat/completions" and request.json().get("stream"):
                    await _write_sse(writer, _chat_chunks(request.json()))
                else:
                    await _write(writer, self._route(request))

    def _denied(self, request: Recorded) -> Answer | None:
        if self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ")
        # Like real providers, the message echoes (part of) the key it was given.
        return _json(401, {"error": {"message": f"Incorrect API key provided: {given}", "type": "invalid_request"}})

    def _route(self, request: Recorded) -> Answer:
        if request.method == "GET" and request.path == "/v1/models":
            return _json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        handlers = {
            "/v1/embeddings": _embeddings,
            "/v1/chat/completions": _chat,
            "/v1/rerank": _rerank_cohere,
            "/rerank": _rerank_tei,
        }
        handler = handlers.get(request.path)
        if request.method != "POST" or handler is None:
            return _json(404, {"error": {"message": f"no route {request.method} {request.path}"}})
        return handler(request.json())


def _embeddings(body: dict[str, Any]) -> Answer:
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    dims = int(body.get("dimensions") or DIMENSIONS)
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        vec = toy_vector(text, dims)
        emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    # Out of order on purpose: clients must sort by `index`.
    data.reverse()
    tokens = sum(len(t.split()) for t in texts)
    return _json(200, {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": tokens}})


def _reply(body: dict[str, Any]) -> tuple[list[str], str]:
    last = body["messages"][-1]["content"] if body.get("messages") else ""
    words = f"echo: {last}".split()
    limit = body.get("max_tokens")
    cut = words[:limit] if limit else words
    return cut, "length" if len(cut) < len(words) else "stop"


def _chat(body: dict[str, Any]) -> Answer:
    words, finish = _reply(body)
    choice = {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": finish}
    usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
    return _json(
        200, {"id": "c1", "object": "chat.completion", "model": body["model"], "choices": [choice], "usage": usage}
    )


def _chat_chunks(body: dict[str, Any]) -> list[bytes]:
    words, finish = _reply(body)
    events = [b": keepalive\n\n"]
    for i, word in enumerate(words):
        delta = {"content": word if i == 0 else " " + word}
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        events.append(f"data: {json.dumps(chunk)}\n\n".encode())
        events.append(b": keepalive\n\n")
    final = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    usage = {
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(words)},
    }
    events += [
        f"data: {json.dumps(final)}\n\n".encode(),
        f"data: {json.dumps(usage)}\n\n".encode(),
        b"data: [DONE]\n\n",
    ]
    return events


def _rerank_cohere(body: dict[str, Any]) -> Answer:
    scores = [overlap_score(body["query"], d) for d in body["documents"]]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: body.get("top_n") or len(scores)]
    results = [{"index": i, "relevance_score": scores[i]} for i in order]
    return _json(200, {"results": results, "model": body.get("model"), "usage": {"total_tokens": 0}})


def _rerank_tei(body: dict[str, Any]) -> Answer:
    scores = [overlap_score(body["query"], t) for t in body["texts"]]
    return _json(200, [{"index": i, "score": s} for i, s in sorted(enumerate(scores), key=lambda p: -p[1])])


def _json(status: int, payload: Any) -> Answer:
    return Answer(status, json.dumps(payload).encode())


_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


async def _read_request(reader: asyncio.StreamReader) -> Recorded | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Recorded(method=method, path=target.split("?", 1)[0], headers=headers, body=body)


async def _write(writer: asyncio.StreamWriter, answer: Answer, *, drip_s: float = 0.0) -> None:
    head = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Status')}"]
    head += [f"content-type: {answer.content_type}", f"content-length: {len(answer.body)}"]
    head += [f"{k}: {v}" for k, v in answer.headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if drip_s else answer.body))
    await writer.drain()
    for i in range(len(answer.body) if drip_s else 0):
        writer.write(answer.body[i : i + 1])
        await writer.drain()
        await asyncio.sleep(drip_s)


async def _write_huge(writer: asyncio.StreamWriter, request: Recorded, huge: Huge) -> None:
    """Chunked, then the connection is closed: whatever the client does not read is never generated."""
    texts = request.json().get("input", []) if request.body else []
    count = 1 if isinstance(texts, str) else max(1, len(texts))
    chunks = _long_vector(huge.size_bytes) if huge.size_bytes else _wide_data(count, huge.dimensions)
    with contextlib.suppress(ConnectionError):
        await write_streamed(writer, 200, chunks)
    writer.close()


def _long_vector(size: int) -> Iterator[bytes]:
    yield b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":['
    block = b"0.125," * 10_000
    for _ in range(size // len(block)):
        yield block
    yield b'0.125]}],"model":"m"}'


def _wide_data(count: int, dimensions: int) -> Iterator[bytes]:
    yield b'{"object":"list","data":['
    row = b"0," * min(dimensions - 1, 1 << 15)
    for i in range(count):
        yield (b"," if i else b"") + b'{"object":"embedding","index":%d,"embedding":[' % i
        left = dimensions - 1
        while left > 0:
            take = min(left, len(row) // 2)
            yield row[: take * 2]
            left -= take
        yield b"0]}"
    yield b'],"model":"m"}'


async def _write_sse(writer: asyncio.StreamWriter, events: list[bytes]) -> None:
    head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    writer.write(head.encode("latin-1"))
    for event in events:
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI-compatible API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    fake = FakeOpenAI(api_key=args.api_key, port=args.port).start()
    print(f"fake openai listening on {fake.url}", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
