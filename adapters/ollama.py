"""Ollama over HTTP: chat via /api/chat, embeddings via /api/embed, rerank by embedding cosine.

Built on the kit (adapters/kit.py): one pooled client, answers size-capped and
decoded off the event loop when large, vectors checked against the model's width.
Embeddings go upstream as one request per `batch_limit` texts, one chunk at a time:
Ollama queues requests per model, so parallel chunks would only wait in its queue.
Ollama has no rerank API, so rerank embeds the query with the documents and scores
by cosine (method "bi-encoder-cosine"). Model names follow Ollama's own identity
rules (`canonical_model`): case-insensitive, default registry and namespace
implied, `:latest` when no tag is given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import anyio

from adapters import _ollama_wire as wire
from adapters._http import HTTPUpstream, UpstreamOptions, as_is, redact_url
from adapters.base import AdapterContext, AdapterInfo, ModelInfo, ProbeResult
from adapters.errors import AdapterError, UpstreamProtocolError, safe_detail
from adapters.kit import HTTPAdapter, declared_models, pinned_dimensions
from adapters.manifest import OllamaManifest
from adapters.naming import ollama_model_name
from adapters.types import (
    CAPABILITIES,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    ProgressFn,
    RerankRequest,
    RerankResult,
    Usage,
    rank,
)


class OllamaAdapter(HTTPAdapter):
    kind = "ollama"
    embed_concurrency = 1

    def __init__(self, manifest: OllamaManifest, context: AdapterContext) -> None:
        self._manifest = manifest
        models = declared_models(manifest.models)
        # With no models listed, anything the server has may serve any capability until a probe says otherwise.
        caps = frozenset(c for m in models for c in m.capabilities) if models else frozenset(CAPABILITIES)
        info = AdapterInfo(manifest.name, "ollama", manifest.privacy, caps, models, redact_url(manifest.endpoint))
        upstream = HTTPUpstream(
            manifest.endpoint,
            context.limits,
            describe=f"ollama adapter {manifest.name!r}",
            options=UpstreamOptions(status=wire.status_error, max_response_bytes=manifest.max_response_bytes),
        )
        super().__init__(info, context, upstream, pinned=pinned_dimensions(manifest.models))

    def canonical_model(self, name: str) -> str:
        return ollama_model_name(name)

    # --- probe ---------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        answers: dict[str, object] = {}
        deadline = self.limits.probe_deadline_s
        try:
            with anyio.fail_after(deadline):
                async with anyio.create_task_group() as tg:
                    for path in ("/api/version", "/api/tags"):
                        tg.start_soon(self._probe_get, path, answers)
        except TimeoutError:
            return ProbeResult(ok=False, error=f"ollama probe: no answer within {deadline:g} s")
        tags = answers.get("/api/tags")
        if isinstance(tags, AdapterError):
            return ProbeResult(ok=False, error=str(tags))
        try:
            models, missing = self._served(wire.tag_models(tags))
        except UpstreamProtocolError as exc:
            return ProbeResult(ok=False, error=str(exc))
        if not self._manifest.models and models:
            caps = frozenset(c for m in models for c in m.capabilities)
            self.info = replace(self.info, models=models, capabilities=caps)
        version, details = wire.version(answers.get("/api/version"))
        if missing:
            details["missing_models"] = safe_detail(", ".join(missing))
        return ProbeResult(ok=True, models=models, version=version, details=details, unlisted=tuple(missing))

    async def _probe_get(self, path: str, answers: dict[str, object]) -> None:
        try:
            answers[path] = await self.http.call("GET", path, f"ollama probe {path}", parse=as_is)
        except AdapterError as exc:
            answers[path] = exc

    def _served(self, listed: list[ModelInfo]) -> tuple[tuple[ModelInfo, ...], list[str]]:
        """Served models; when the manifest lists models, only those, with the manifest's capabilities."""
        if not self._manifest.models:
            return tuple(listed), []
        served = {self.canonical_model(m.name): m for m in listed}
        found: list[ModelInfo] = []
        missing: list[str] = []
        for spec, declared in zip(self._manifest.models, self.info.models, strict=True):
            seen = served.get(self.canonical_model(spec.name))
            if seen is None:
                missing.append(spec.name)
            else:
                found.append(replace(declared, family=seen.family))
        return tuple(found), missing

    # --- embed / rerank ------------------------------------------------------

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        return await self.embed_in_chunks(req, lambda texts, first: self._embed_chunk(req, texts, first))

    async def rerank(self, req: RerankRequest) -> RerankResult:
        self.require("rerank")
        if not req.documents:
            return RerankResult(model=req.model, results=(), method="bi-encoder-cosine", usage=Usage())
        embedded = EmbedRequest(model=req.model, texts=(req.query, *req.documents))
        result = await self.embed_in_chunks(
            embedded, lambda texts, first: self._embed_chunk(embedded, texts, first), capability="rerank"
        )
        scores = rank(wire.cosines(result.vectors), req.top_n)
        return RerankResult(model=req.model, results=scores, method="bi-encoder-cosine", usage=result.usage)

    async def _embed_chunk(self, req: EmbedRequest, texts: Sequence[str], first: int) -> tuple[list[list[float]], int]:
        what = f"ollama embed {req.model!r}"
        options = self._manifest.options
        body = wire.embed_body(req.model, texts, req.dimensions, options.truncate, options.keep_alive)
        return await self.http.call(
            "POST", "/api/embed", what, body=body, parse=lambda answer: wire.read_embed(answer, len(texts), first, what)
        )

    # --- chat ----------------------------------------------------------------

    async def chat(self, req: ChatRequest) -> ChatResult:
        self.require("chat")
        what = f"ollama chat {req.model!r}"
        keep_alive = self._manifest.options.keep_alive
        started = time.perf_counter()
        if req.progress is None:
            body, content = await self.http.call(
                "POST",
                "/api/chat",
                what,
                body=wire.chat_body(req, stream=False, keep_alive=keep_alive),
                parse=lambda answer: wire.read_chat(answer, what),
            )
            first = None
        else:
            body, content, first = await self._chat_stream(req, what, started, req.progress)
        return wire.chat_result(req.model, body, content, time.perf_counter() - started, first)

    async def _chat_stream(
        self, req: ChatRequest, what: str, started: float, progress: ProgressFn
    ) -> tuple[dict[str, Any], str, float | None]:
        """NDJSON chunks until `done`; the stream is closed on every exit, cancellation included."""
        payload = wire.chat_body(req, stream=True, keep_alive=self._manifest.options.keep_alive)
        parts: list[str] = []
        first: float | None = None
        total = None if req.max_tokens is None else float(req.max_tokens)
        async with self.http.stream_lines("POST", "/api/chat", what, body=payload) as lines:
            async for line in lines:
                item = wire.stream_item(line, what)
                if item is None:
                    continue
                piece = wire.content(item, what)
                if piece and first is None:
                    first = time.perf_counter() - started
                parts.append(piece)
                if item.get("done") is True:
                    return item, "".join(parts), first
                await progress(float(len(parts)), total, None)
        raise UpstreamProtocolError(f"{what}: the stream ended before its final chunk")
