"""Ollama over HTTP: chat via /api/chat, embeddings via /api/embed, rerank by embedding cosine.

One pooled client serves the adapter's lifetime. Embeddings go upstream as one
request per `batch_limit` texts, and every body is validated before it is
returned: a wrong vector count or shape is an UpstreamProtocolError, never data.
Ollama has no rerank API, so rerank embeds the query with the documents in the
same request and scores by cosine (method "bi-encoder-cosine").
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import anyio

from adapters._http import (
    HTTPClient,
    HTTPResponse,
    build_client,
    json_body,
    open_stream,
    redact_url,
    send_json,
    status_error,
)
from adapters.base import AdapterContext, AdapterInfo, ModelInfo, ProbeResult
from adapters.errors import (
    AdapterError,
    AdapterUnavailableError,
    CapabilityError,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamProtocolError,
    safe_detail,
)
from adapters.manifest import ModelSpec, OllamaManifest
from adapters.types import (
    CAPABILITIES,
    Capability,
    ChatRequest,
    ChatResult,
    ChatTimings,
    EmbedRequest,
    EmbedResult,
    FinishReason,
    ProgressFn,
    RerankRequest,
    RerankResult,
    Usage,
    rank,
)

_EMBED_CAPS: frozenset[Capability] = frozenset({"embed", "rerank"})
_CHAT_CAPS: frozenset[Capability] = frozenset({"chat"})
_NS_PER_MS = 1_000_000
_NUMBER_TYPES = frozenset({float, int})


class OllamaAdapter:
    def __init__(self, manifest: OllamaManifest, context: AdapterContext) -> None:
        self._manifest = manifest
        self._limits = context.limits
        self._client: HTTPClient | None = None
        self._closed = False
        models = tuple(ModelInfo(s.name, frozenset(s.capabilities)) for s in manifest.models)
        # With no models listed, anything the server has may serve any capability until a probe says otherwise.
        caps = frozenset(c for m in models for c in m.capabilities) if models else frozenset(CAPABILITIES)
        self.info = AdapterInfo(
            name=manifest.name,
            kind="ollama",
            privacy=manifest.privacy,
            capabilities=caps,
            models=models,
            endpoint=redact_url(manifest.endpoint),
        )

    # --- lifecycle -----------------------------------------------------------

    def _http(self) -> HTTPClient:
        if self._closed:
            raise AdapterUnavailableError(f"ollama adapter {self.info.name!r} is closed")
        if self._client is None:
            self._client = build_client(self._manifest.endpoint, self._limits)
        return self._client

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            # Shielded so a cancelled caller still releases the pool's sockets.
            with anyio.move_on_after(5, shield=True):
                await client.aclose()

    # --- probe ---------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        answers: dict[str, object] = {}
        deadline = self._limits.probe_deadline_s
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
            models, missing = self._models_from_tags(tags)
        except UpstreamProtocolError as exc:
            return ProbeResult(ok=False, error=str(exc))
        if not self._manifest.models and models:
            caps = frozenset(c for m in models for c in m.capabilities)
            self.info = replace(self.info, models=models, capabilities=caps)
        version, details = _version(answers.get("/api/version"))
        if missing:
            details["missing_models"] = safe_detail(", ".join(missing))
        return ProbeResult(ok=True, models=models, version=version, details=details)

    async def _probe_get(self, path: str, answers: dict[str, object]) -> None:
        try:
            answers[path] = await self._request("GET", path, f"ollama probe {path}")
        except AdapterError as exc:
            answers[path] = exc

    def _models_from_tags(self, tags: object) -> tuple[tuple[ModelInfo, ...], list[str]]:
        """Served models; when the manifest lists models, only those, with the manifest's capabilities."""
        listed = tags.get("models") if isinstance(tags, dict) else None
        if not isinstance(listed, list):
            raise UpstreamProtocolError("ollama probe /api/tags: the answer has no model list")
        served = {m.name: m for m in (_tag_model(item) for item in listed) if m is not None}
        if not self._manifest.models:
            return tuple(served.values()), []
        found: list[ModelInfo] = []
        missing: list[str] = []
        for spec in self._manifest.models:
            seen = served.get(spec.name) or served.get(f"{spec.name}:latest")
            if seen is None:
                missing.append(spec.name)
            else:
                found.append(_from_spec(spec, seen.family))
        return tuple(found), missing

    # --- embed / rerank ------------------------------------------------------

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        self._require("embed")
        vectors, tokens = await self._embed_texts(req.model, req.texts, req.dimensions, req.progress)
        return EmbedResult(model=req.model, vectors=vectors, usage=Usage(input_tokens=tokens))

    async def rerank(self, req: RerankRequest) -> RerankResult:
        self._require("rerank")
        if not req.documents:
            return RerankResult(model=req.model, results=(), method="bi-encoder-cosine", usage=Usage())
        vectors, tokens = await self._embed_texts(req.model, (req.query, *req.documents), None, None)
        return RerankResult(
            model=req.model,
            results=rank(_cosines(vectors), req.top_n),
            method="bi-encoder-cosine",
            usage=Usage(input_tokens=tokens),
        )

    async def _embed_texts(
        self, model: str, texts: Sequence[str], dimensions: int | None, progress: ProgressFn | None
    ) -> tuple[list[list[float]], int]:
        what = f"ollama embed {model!r}"
        vectors: list[list[float]] = []
        tokens = 0
        step = max(1, self._limits.batch_limit)
        for start in range(0, len(texts), step):
            chunk = list(texts[start : start + step])
            payload: dict[str, object] = {
                "model": model,
                "input": chunk,
                "truncate": self._manifest.options.truncate,
                "keep_alive": self._manifest.options.keep_alive,
            }
            if dimensions is not None:
                payload["dimensions"] = dimensions
            body = await self._request("POST", "/api/embed", what, payload)
            width = dimensions or (len(vectors[0]) if vectors else None)
            vectors.extend(_embeddings(body, len(chunk), width, start, what))
            tokens += _count(body, "prompt_eval_count")
            if progress is not None:
                await progress(float(len(vectors)), float(len(texts)), None)
        return vectors, tokens

    # --- chat ----------------------------------------------------------------

    async def chat(self, req: ChatRequest) -> ChatResult:
        self._require("chat")
        what = f"ollama chat {req.model!r}"
        started = time.perf_counter()
        if req.progress is None:
            body = await self._request("POST", "/api/chat", what, self._chat_payload(req, stream=False))
            if not isinstance(body, dict):
                raise UpstreamProtocolError(f"{what}: upstream answer is not a JSON object")
            content, first = _content(body, what), None
        else:
            body, content, first = await self._chat_stream(req, what, started, req.progress)
        return _chat_result(req.model, body, content, time.perf_counter() - started, first)

    def _chat_payload(self, req: ChatRequest, *, stream: bool) -> dict[str, object]:
        options: dict[str, object] = {}
        if req.max_tokens is not None:
            options["num_predict"] = req.max_tokens
        if req.temperature is not None:
            options["temperature"] = req.temperature
        if req.stop:
            options["stop"] = list(req.stop)
        return {
            "model": req.model,
            "messages": [{"role": m.role, "content": m.content} for m in req.messages],
            "stream": stream,
            "options": options,
            "keep_alive": self._manifest.options.keep_alive,
        }

    async def _chat_stream(
        self, req: ChatRequest, what: str, started: float, progress: ProgressFn
    ) -> tuple[dict[str, Any], str, float | None]:
        """NDJSON chunks until `done`; the stream is closed on every exit, cancellation included."""
        payload = self._chat_payload(req, stream=True)
        async with open_stream(self._http(), "POST", "/api/chat", what, payload) as response:
            if not response.is_success:
                await response.aread()
                raise _status(response, what)
            parts: list[str] = []
            first: float | None = None
            async for line in response.aiter_lines():
                item = _json_line(line, what)
                if item is None:
                    continue
                piece = _content(item, what)
                if piece and first is None:
                    first = time.perf_counter() - started
                parts.append(piece)
                if item.get("done") is True:
                    return item, "".join(parts), first
                await progress(float(len(parts)), None if req.max_tokens is None else float(req.max_tokens), None)
        raise UpstreamProtocolError(f"{what}: the stream ended before its final chunk")

    # --- shared --------------------------------------------------------------

    def _require(self, capability: Capability) -> None:
        if capability not in self.info.capabilities:
            raise CapabilityError(f"ollama adapter {self.info.name!r} does not serve {capability}")

    async def _request(self, method: str, path: str, what: str, payload: object | None = None) -> Any:
        response = await send_json(self._http(), method, path, what, payload)
        if not response.is_success:
            raise _status(response, what)
        return json_body(response, what)


def _status(response: HTTPResponse, what: str) -> AdapterError:
    err = status_error(response, what)
    text = err.message.lower()
    if response.status_code == 404 and "model" in text and "not found" in text:
        return ModelNotFoundError(err.message)
    if response.status_code == 400:
        return InvalidRequestError(err.message)
    return err


def _tag_model(item: object) -> ModelInfo | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    name: str = item["name"]
    details = item.get("details")
    family = details.get("family") if isinstance(details, dict) else None
    family = family if isinstance(family, str) else None
    return ModelInfo(name=name, capabilities=_guess_capabilities(name, family), family=family)


def _guess_capabilities(name: str, family: str | None) -> frozenset[Capability]:
    """Ollama's tags do not say what a model serves; encoder families and 'embed' names are the tell."""
    lowered = name.lower()
    if (family or "").lower().endswith("bert") or "embed" in lowered or "minilm" in lowered:
        return _EMBED_CAPS
    return _CHAT_CAPS


def _from_spec(spec: ModelSpec, family: str | None) -> ModelInfo:
    return ModelInfo(name=spec.name, capabilities=frozenset(spec.capabilities), family=family)


def _version(answer: object) -> tuple[str | None, dict[str, str]]:
    if isinstance(answer, AdapterError):
        return None, {"version_error": safe_detail(str(answer))}
    version = answer.get("version") if isinstance(answer, dict) else None
    return (version, {}) if isinstance(version, str) else (None, {})


def _count(body: object, key: str) -> int:
    value = body.get(key) if isinstance(body, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _embeddings(body: object, expected: int, width: int | None, first: int, what: str) -> list[list[float]]:
    """The vectors of one /api/embed answer, or UpstreamProtocolError naming what is wrong.

    `first` is the input index of the answer's first vector, so messages name the caller's input.
    """
    vectors = body.get("embeddings") if isinstance(body, dict) else None
    if not isinstance(vectors, list):
        raise UpstreamProtocolError(f"{what}: upstream answer has no 'embeddings' list")
    if len(vectors) != expected:
        raise UpstreamProtocolError(f"{what}: upstream returned {len(vectors)} vectors for {expected} inputs")
    for i, vector in enumerate(vectors):
        kinds = set(map(type, vector)) if isinstance(vector, list) else None
        # A finite sum proves every element finite in one C-speed pass (bools are excluded by type).
        if not kinds or not kinds <= _NUMBER_TYPES or not math.isfinite(sum(vector)):
            raise UpstreamProtocolError(f"{what}: vector {first + i} is not a non-empty list of finite numbers")
        if int in kinds:
            vectors[i] = [float(x) for x in vector]
        width = width or len(vector)
        if len(vector) != width:
            raise UpstreamProtocolError(f"{what}: vector {first + i} has {len(vector)} dimensions, expected {width}")
    return vectors


def _cosines(vectors: list[list[float]]) -> list[float]:
    """Cosine of each document (rows 1..) with the query (row 0); vectors need not be normalised."""
    import numpy as np  # kept off the start-up path

    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0.0] = 1.0
    unit = matrix / norms[:, None]
    scores: list[float] = (unit[1:] @ unit[0]).tolist()
    return scores


def _json_line(line: str, what: str) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise UpstreamProtocolError(f"{what}: upstream stream carried a line that is not JSON") from exc
    if not isinstance(item, dict):
        raise UpstreamProtocolError(f"{what}: upstream stream carried a line that is not a JSON object")
    if "error" in item:
        raise UpstreamProtocolError(f"{what}: upstream failed mid-answer: {safe_detail(str(item['error']))}")
    return item


def _content(body: dict[str, Any], what: str) -> str:
    message = body.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise UpstreamProtocolError(f"{what}: upstream answer has no message content")
    return content


def _chat_result(
    model: str, body: dict[str, Any], content: str, elapsed_s: float, measured_ttft_s: float | None
) -> ChatResult:
    finish: FinishReason = "length" if body.get("done_reason") == "length" else "stop"
    usage = Usage(input_tokens=_count(body, "prompt_eval_count"), output_tokens=_count(body, "eval_count"))
    total_ns, eval_ns = _count(body, "total_duration"), _count(body, "eval_duration")
    ttft_ms = measured_ttft_s * 1000 if measured_ttft_s is not None else None
    if "prompt_eval_duration" in body:
        ttft_ms = (_count(body, "load_duration") + _count(body, "prompt_eval_duration")) / _NS_PER_MS
    timings = ChatTimings(
        total_ms=total_ns / _NS_PER_MS if total_ns else elapsed_s * 1000,
        time_to_first_token_ms=ttft_ms,
        tokens_per_second=usage.output_tokens / (eval_ns / 1e9) if eval_ns and usage.output_tokens else None,
    )
    return ChatResult(model=model, content=content, finish_reason=finish, usage=usage, timings=timings)
