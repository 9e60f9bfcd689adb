"""A loopback stand-in for Hugging Face text-embeddings-inference (TEI), speaking its wire.

Routes, as TEI serves them: `GET /health` (empty 200), `GET /info`, `POST /embed`
({inputs, normalize, truncate} -> [[float]]), `POST /rerank` ({query, texts,
return_text} -> [{index, score}] best first), and OpenAI's `POST /v1/embeddings`.
There is NO `/v1/models`: TEI answers 404 there, which is what an OpenAI-compatible
client meets in the field. `list_models = True` adds the route (as a proxy in
front of TEI might), so a test can watch a client notice the change.

Like TEI, a request with more inputs than `max_client_batch_size` (32 by default)
is refused with 413 and a validation message.

    with FakeTEI() as tei:
        ...  # an OpenAI-compatible adapter at tei.url, rerank_path "/rerank", rerank_style "tei"
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
from collections import Counter
from typing import Any

from tests.support.fake_openai import overlap_score, toy_vector
from tests.support.http1 import INVALID, LoopbackServer, Reply, Request, write_response

MODEL_ID = "BAAI/bge-small-en-v1.5"
DIMENSIONS = 16


class FakeTEI(LoopbackServer):
    def __init__(self, *, max_client_batch_size: int = 32) -> None:
        super().__init__()
        self.max_client_batch_size = max_client_batch_size
        self.list_models = False
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts[path]

    async def respond(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        with self._lock:
            self._counts[req.path] += 1
        await write_response(writer, self._route(req), req.keep_alive)
        return req.keep_alive

    def _route(self, req: Request) -> Reply:
        if req.body is INVALID:
            return Reply(422, {"error": "Failed to parse the request body as JSON", "error_type": "Validation"})
        if req.method == "GET":
            if req.path == "/health":
                return Reply(200, {})
            if req.path == "/info":
                return Reply(payload=self._info())
            if req.path == "/v1/models" and self.list_models:
                return Reply(payload={"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})
            return Reply(404, {})
        handlers = {"/embed": self._embed, "/rerank": self._rerank, "/v1/embeddings": self._openai_embeddings}
        handler = handlers.get(req.path)
        if req.method != "POST" or handler is None or not isinstance(req.body, dict):
            return Reply(404, {})
        return handler(req.body)

    def _info(self) -> dict[str, Any]:
        return {
            "model_id": MODEL_ID,
            "model_dtype": "float16",
            "model_type": {"embedding": {"pooling": "cls"}},
            "max_concurrent_requests": 512,
            "max_input_length": 512,
            "max_batch_tokens": 16384,
            "max_client_batch_size": self.max_client_batch_size,
            "tokenization_workers": 1,
            "version": "1.5.0",
        }

    def _too_many(self, count: int) -> Reply | None:
        if count <= self.max_client_batch_size:
            return None
        message = f"batch size {count} > maximum allowed batch size {self.max_client_batch_size}"
        return Reply(413, {"error": message, "error_type": "Validation"})

    def _embed(self, body: dict[str, Any]) -> Reply:
        inputs = body.get("inputs")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return Reply(422, {"error": "`inputs` must be a string or a list of strings", "error_type": "Validation"})
        return self._too_many(len(texts)) or Reply(payload=[toy_vector(t, DIMENSIONS) for t in texts])

    def _rerank(self, body: dict[str, Any]) -> Reply:
        query, texts = body.get("query"), body.get("texts")
        if not isinstance(query, str) or not isinstance(texts, list):
            return Reply(422, {"error": "`query` and `texts` are required", "error_type": "Validation"})
        if (refused := self._too_many(len(texts))) is not None:
            return refused
        scores = sorted(((i, overlap_score(query, t)) for i, t in enumerate(texts)), key=lambda p: (-p[1], p[0]))
        results = [{"index": i, "score": s} for i, s in scores]
        if body.get("return_text"):
            results = [r | {"text": texts[int(r["index"])]} for r in results]
        return Reply(payload=results)

    def _openai_embeddings(self, body: dict[str, Any]) -> Reply:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return Reply(422, {"error": "`input` must be a string or a list of strings", "error_type": "Validation"})
        if (refused := self._too_many(len(texts))) is not None:
            return refused
        packed = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vector = toy_vector(text, DIMENSIONS)
            value: Any = base64.b64encode(struct.pack(f"<{DIMENSIONS}f", *vector)).decode() if packed else vector
            data.append({"object": "embedding", "index": i, "embedding": value})
        usage = {"prompt_tokens": sum(len(t.split()) for t in texts), "total_tokens": 0}
        return Reply(payload={"object": "list", "data": data, "model": MODEL_ID, "usage": usage})
