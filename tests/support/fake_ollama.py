"""A loopback stand-in for Ollama that speaks its wire shapes and fails on request.

In-process (own thread and event loop, so a sleeping or dripping handler never
blocks the test's loop)::

    with FakeOllama() as fake:
        fake.inject(Fault("status", path="/api/embed", status=503, times=1))
        ...  # talk to fake.url
        assert fake.count("/api/embed") == 1

As a process: ``python -m tests.support.fake_ollama --port 0`` prints the bound
URL as its only stdout line and logs to stderr. Such a process is steered over
HTTP: ``GET /_fake/stats``, ``POST /_fake/faults`` (a Fault as JSON),
``POST /_fake/reset``. Control paths are not counted.

Embeddings are a hashed bag of character trigrams (384-d, L2-normalised), so
texts that share wording get a high cosine. Chat replies echo the last user
message; one whitespace-delimited word is one token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import orjson

from tests.support.http1 import (
    INVALID,
    LoopbackServer,
    Reply,
    Request,
    oversized_embeddings,
    oversized_length,
    wide_body_length,
    wide_embeddings,
    write_response,
    write_streamed,
)
from tests.support.proc import stop as stop_process

log = logging.getLogger("fake_ollama")

DIMENSIONS = 384
CONTEXT_WORDS = 512
FaultKind = Literal[
    "status", "slow", "drip", "malformed", "wrong_count", "ragged", "disconnect", "body", "oversized", "wide"
]


@dataclass
class Fault:
    """One injected misbehaviour, applied to the next `times` requests on `path` (None: every /api/ path)."""

    kind: FaultKind
    path: str | None = None
    status: int = 500
    message: str = "injected failure"
    retry_after: str | None = None
    delay_s: float = 0.5  # slow: sleep before the headers
    drip_interval_s: float = 0.05  # drip: one body byte (or stream chunk) per interval
    times: int | None = None  # None: until cleared
    skip: int = 0  # let this many matching requests through untouched first
    body: str = ""  # body: sent verbatim with the real status instead of the real body
    size_bytes: int = 200 << 20  # oversized: a valid embed answer of about this many bytes
    dimensions: int = 6_000_000  # wide: one vector per input with this many dimensions
    declare_length: bool = False  # oversized/wide: send Content-Length (else chunked, so only reading finds out)


@dataclass(frozen=True)
class FakeModel:
    name: str
    family: str
    embeds: bool
    parameter_size: str = "1B"
    quantization_level: str = "Q4_K_M"


DEFAULT_MODELS = (
    FakeModel("all-minilm:latest", "bert", True, "23M", "F16"),
    FakeModel("nomic-embed-text:latest", "nomic-bert", True, "137M", "F16"),
    FakeModel("llama3.2:1b", "llama", False),
)


@functools.lru_cache(maxsize=65536)
def _feature(trigram: str) -> tuple[int, float]:
    digest = hashlib.blake2b(trigram.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % DIMENSIONS, 1.0 if value >> 63 else -1.0


def embed_text(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """Deterministic across processes: hashlib, never the salted built-in hash()."""
    return list(_embed_cached(text, dimensions))


@functools.lru_cache(maxsize=4096)
def _embed_cached(text: str, dimensions: int) -> tuple[float, ...]:
    padded = "  " + " ".join(text.lower().split()) + " "
    vec = [0.0] * DIMENSIONS
    for i in range(len(padded) - 2):
        index, sign = _feature(padded[i : i + 3])
        vec[index] += sign
    vec = vec[:dimensions]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    # float32 values in their shortest form, as Ollama (Go, float32) puts them on the wire
    return tuple(float(str(np.float32(x / norm))) for x in vec)


def _words(text: str) -> list[str]:
    return text.split()


class FakeOllama(LoopbackServer):
    def __init__(self, models: tuple[FakeModel, ...] = DEFAULT_MODELS, *, latency_s: float = 0.0) -> None:
        super().__init__()
        self.models = models
        self.latency_s = latency_s
        # (path, JSON body) of the latest /api/ calls, oldest first; bounded for long benchmark runs
        self.requests: deque[tuple[str, Any]] = deque(maxlen=256)
        self._counts: Counter[str] = Counter()
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        # Body bytes sent per oversized/wide answer (bounded like `requests`).
        self.streamed: deque[int] = deque(maxlen=256)

    # --- control from tests -------------------------------------------------

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts[path]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._counts.clear()
            self.requests.clear()

    async def respond(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        if req.path.startswith("/_fake/"):
            await write_response(writer, self._control(req), req.keep_alive)
            return req.keep_alive
        fault = self._take_fault(req)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault is not None and fault.kind == "disconnect":
            return False
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
        if fault is not None and fault.kind in ("oversized", "wide"):
            await self._stream_fault(req, writer, fault)
            return False
        reply = self._route(req) if fault is None or fault.kind != "status" else _status_reply(fault)
        body = _corrupt(reply, fault) if fault is not None else None
        drip = fault.drip_interval_s if fault is not None and fault.kind == "drip" else 0.0
        await write_response(writer, reply, req.keep_alive, body=body, drip_s=drip)
        return req.keep_alive

    async def _stream_fault(self, req: Request, writer: asyncio.StreamWriter, fault: Fault) -> None:
        """A huge answer, generated while it is sent; records how much of it went to the socket."""
        if fault.kind == "oversized":
            chunks, length = oversized_embeddings(fault.size_bytes), oversized_length(fault.size_bytes)
        else:
            texts = req.body.get("input", []) if isinstance(req.body, dict) else []
            count = 1 if isinstance(texts, str) else max(1, len(texts))
            chunks, length = wide_embeddings(count, fault.dimensions), wide_body_length(count, fault.dimensions)
        sent = 0

        def counted() -> Iterator[bytes]:
            nonlocal sent
            for chunk in chunks:
                sent += len(chunk)
                yield chunk

        try:
            await write_streamed(writer, 200, counted(), length=length if fault.declare_length else None)
        finally:
            with self._lock:
                self.streamed.append(sent)

    def _take_fault(self, req: Request) -> Fault | None:
        with self._lock:
            self._counts[req.path] += 1
            self.requests.append((req.path, req.body))
            for fault in self._faults:
                if fault.path in (None, req.path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _control(self, req: Request) -> Reply:
        if req.path == "/_fake/stats":
            return Reply(payload={"counts": self.counts()})
        if req.path == "/_fake/reset" and req.method == "POST":
            self.reset()
            return Reply(payload={})
        if req.path == "/_fake/faults" and req.method == "POST" and isinstance(req.body, dict):
            try:
                self.inject(Fault(**req.body))
            except TypeError as exc:
                return Reply(400, {"error": str(exc)})
            return Reply(payload={})
        return Reply(404, {"error": "unknown control path"})

    # --- Ollama API ----------------------------------------------------------

    def _route(self, req: Request) -> Reply:
        if req.body is INVALID:
            return Reply(400, {"error": "invalid JSON in request body"})
        routes: dict[tuple[str, str], Callable[[], Reply]] = {
            ("GET", "/api/version"): lambda: Reply(payload={"version": "0.9.9-fake"}),
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): lambda: Reply(payload={"models": []}),
            ("POST", "/api/embed"): lambda: self._embed(req.body),
            ("POST", "/api/chat"): lambda: self._chat(req.body),
        }
        handler = routes.get((req.method, req.path))
        return handler() if handler is not None else Reply(404, {"error": "404 page not found"})

    def _tags(self) -> Reply:
        models = [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": "2026-01-01T00:00:00Z",
                "size": 1000,
                "digest": hashlib.sha256(m.name.encode()).hexdigest(),
                "details": {
                    "family": m.family,
                    "parameter_size": m.parameter_size,
                    "quantization_level": m.quantization_level,
                },
            }
            for m in self.models
        ]
        return Reply(payload={"models": models})

    def _find(self, body: Any) -> FakeModel | Reply:
        name = body.get("model") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return Reply(400, {"error": "model is required"})
        for m in self.models:
            if name in (m.name, m.name.removesuffix(":latest")):
                return m
        return Reply(404, {"error": f'model "{name}" not found, try pulling it first'})

    def _embed(self, body: Any) -> Reply:
        model = self._find(body)
        if isinstance(model, Reply):
            return model
        if not model.embeds:
            return Reply(400, {"error": f'"{model.name}" does not support embeddings'})
        texts = body.get("input", [])
        texts = [texts] if isinstance(texts, str) else texts
        dims = body.get("dimensions") or DIMENSIONS
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return Reply(400, {"error": "invalid input type"})
        if not isinstance(dims, int) or not 0 < dims <= DIMENSIONS:
            return Reply(400, {"error": f"dimensions must be between 1 and {DIMENSIONS}"})
        words = [_words(t) for t in texts]
        if body.get("truncate") is False and any(len(w) > CONTEXT_WORDS for w in words):
            return Reply(400, {"error": "input length exceeds maximum context length"})
        vectors = [embed_text(" ".join(w[:CONTEXT_WORDS]), dims) for w in words]
        count = sum(min(len(w), CONTEXT_WORDS) + 1 for w in words)
        payload = {"model": model.name, "embeddings": vectors, "total_duration": 1_000_000 + 50_000 * count}
        return Reply(payload=payload | {"load_duration": 1_000_000, "prompt_eval_count": count})

    def _chat(self, body: Any) -> Reply:
        model = self._find(body)
        if isinstance(model, Reply):
            return model
        if model.embeds:
            return Reply(400, {"error": f'"{model.name}" does not support chat'})
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return Reply(400, {"error": "messages must be a list of objects"})
        reply, reason = _reply_text(messages, body.get("options") or {})
        stats = _chat_stats(messages, reply)
        head = {"model": model.name, "created_at": "2026-01-01T00:00:00Z"}
        if body.get("stream", True) is False:
            message = {"role": "assistant", "content": reply}
            return Reply(payload=head | {"message": message, "done": True, "done_reason": reason} | stats)
        lines: list[Any] = [
            head | {"message": {"role": "assistant", "content": piece}, "done": False}
            for piece in re.findall(r"\S+\s*", reply)
        ]
        final = {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": reason}
        return Reply(lines=[*lines, head | final | stats])


def _reply_text(messages: list[dict[str, Any]], options: dict[str, Any]) -> tuple[str, str]:
    last = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
    reply = "Echo: " + " ".join(last.split())
    reason = "stop"
    for stop in options.get("stop") or []:
        if stop and stop in reply:
            reply = reply[: reply.index(stop)]
    limit = options.get("num_predict")
    if isinstance(limit, int) and 0 <= limit < len(_words(reply)):
        reply = " ".join(_words(reply)[:limit])
        reason = "length"
    return reply, reason


def _chat_stats(messages: list[dict[str, Any]], reply: str) -> dict[str, int]:
    prompt = sum(len(_words(str(m.get("content", "")))) + 4 for m in messages)
    out = len(_words(reply))
    load, prompt_ns, eval_ns = 2_000_000, 100_000 * prompt, 5_000_000 * out
    return {
        "total_duration": load + prompt_ns + eval_ns + 1_000_000,
        "load_duration": load,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": prompt_ns,
        "eval_count": out,
        "eval_duration": eval_ns,
    }


def _status_reply(fault: Fault) -> Reply:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    return Reply(fault.status, {"error": fault.message}, headers=headers)


def _corrupt(reply: Reply, fault: Fault) -> bytes | None:
    """The body a data fault sends instead of the real one; None keeps the real body."""
    if fault.kind == "malformed":
        return b'{"model": "x", "embeddings": [[0.1, 0.2'
    if fault.kind == "body":
        return fault.body.encode()
    vectors = reply.payload.get("embeddings") if isinstance(reply.payload, dict) else None
    if not vectors:
        return None
    if fault.kind == "wrong_count":
        vectors = vectors[:-1] if len(vectors) > 1 else vectors * 2
    elif fault.kind == "ragged":
        vectors = [*vectors[:-1], vectors[-1][:-1]]
    else:
        return None
    return orjson.dumps(reply.payload | {"embeddings": vectors})


def remote_inject(url: str, fault: Fault) -> None:
    """Inject a fault into a fake running as a process (blocking: call it from a thread in async code)."""
    _control(url, "/_fake/faults", asdict(fault))


def remote_reset(url: str) -> None:
    _control(url, "/_fake/reset", {})


def remote_counts(url: str) -> dict[str, int]:
    counts: dict[str, int] = _control(url, "/_fake/stats", None)["counts"]
    return counts


def _control(url: str, path: str, payload: dict[str, Any] | None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url + path, data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.load(reply)


@contextlib.contextmanager
def spawn(port: int = 0, latency_ms: float = 0.0) -> Iterator[str]:
    """Run the fake as a separate process; yields its URL and stops it on exit."""
    argv = [sys.executable, "-m", "tests.support.fake_ollama", "--port", str(port), "--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError("fake Ollama process did not report its URL")
        yield url
    finally:
        stop_process(proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Loopback fake Ollama server for tests and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="extra delay before every /api/ reply")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(message)s")
    fake = FakeOllama(latency_s=args.latency_ms / 1000)

    def ready(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(fake.url, flush=True)
        log.info("listening on %s", fake.url)

    asyncio.run(fake.serve(args.host, args.port, on_ready=ready))
    log.info("stopped; requests per path: %s", json.dumps(fake.counts()))


if __name__ == "__main__":
    main()
