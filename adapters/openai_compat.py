"""OpenAI-compatible adapter: OpenAI, vLLM, TGI, TEI, Infinity, mlx_lm.server and friends.

One pooled HTTP client for the adapter's lifetime, built on first use (the
constructor does no I/O). Retries stay inside the adapter and are narrow:
connect failures, 429 and 5xx, at most twice, with jittered exponential
backoff or the server's Retry-After — and never a retry that cannot finish
before the caller's deadline. The API key travels only in the Authorization
header; every provider message is redacted before an exception holds it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio

from adapters import _http
from adapters._batch import map_chunks
from adapters._openai_wire import (
    chat_body,
    read_chat,
    read_models,
    read_rerank,
    read_stream_event,
    read_vectors,
    rerank_body,
)
from adapters.base import AdapterContext, AdapterInfo, ModelInfo, ProbeResult
from adapters.errors import AdapterError, AdapterUnavailableError, CapabilityError, UpstreamStatusError
from adapters.manifest import OpenAIManifest
from adapters.types import (
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
)

T = TypeVar("T")

MAX_RETRIES = 2
_BACKOFF_BASE_S = 0.25
_MAX_SLEEP_S = 30.0
_EMBED_CONCURRENCY = 4
# Hosts whose /v1/embeddings is known to accept encoding_format=base64.
_BASE64_HOSTS = frozenset({"api.openai.com"})
_TOKEN_LIKE = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+|\bsk-[A-Za-z0-9_\-]{4,}")


class OpenAIAdapter:
    def __init__(self, manifest: OpenAIManifest, context: AdapterContext) -> None:
        self._manifest = manifest
        self._limits = context.limits
        self._secret = context.secrets.get(manifest.api_key_env) if manifest.api_key_env else None
        self._client: _http.HTTPClient | None = None
        self._closed = False
        self._what = f"openai adapter '{manifest.name}'"
        self.info = AdapterInfo(
            name=manifest.name,
            kind="openai",
            privacy=manifest.privacy,
            capabilities=_declared(manifest),
            models=tuple(ModelInfo(name=m.name, capabilities=frozenset(m.capabilities)) for m in manifest.models),
            endpoint=_http.redact_url(manifest.endpoint),
        )

    def __repr__(self) -> str:
        return f"OpenAIAdapter(name={self.info.name!r}, endpoint={self.info.endpoint!r})"

    # --- the Adapter protocol -------------------------------------------------------

    async def probe(self) -> ProbeResult:
        try:
            with anyio.fail_after(self._limits.probe_deadline_s):
                body = await self._request("GET", "/v1/models", None, "models")
        except TimeoutError:
            return ProbeResult(ok=False, error=f"{self._what}: /v1/models did not answer in time")
        except AdapterError as exc:
            return ProbeResult(ok=False, error=exc.message)
        declared = {m.name: m for m in self.info.models}
        listed = [ModelInfo(name=n, capabilities=_guess(n) & self.info.capabilities) for n in read_models(body)]
        models = [*declared.values(), *(m for m in listed if m.name not in declared and m.capabilities)]
        return ProbeResult(ok=True, models=tuple(models), details={"listed": str(len(listed))})

    async def chat(self, req: ChatRequest) -> ChatResult:
        self._require("chat")
        started = time.perf_counter()
        body = chat_body(req)
        if (progress := req.progress) is not None:
            return await self._with_retries(lambda: self._chat_stream(req, body, started, progress))
        payload = await self._request("POST", "/v1/chat/completions", body, "chat")
        content, finish, usage = read_chat(payload, self._what)
        timings = ChatTimings(total_ms=(time.perf_counter() - started) * 1000.0)
        return ChatResult(model=req.model, content=content, finish_reason=finish, usage=usage, timings=timings)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        self._require("embed")
        step = max(1, self._limits.batch_limit)
        chunks = [req.texts[i : i + step] for i in range(0, len(req.texts), step)]
        parts = await map_chunks(lambda texts: self._embed_chunk(req, texts), chunks, _EMBED_CONCURRENCY)
        vectors = [v for chunk_vectors, _ in parts for v in chunk_vectors]
        usage = Usage(input_tokens=sum(tokens for _, tokens in parts))
        return EmbedResult(model=req.model, vectors=vectors, usage=usage)

    async def rerank(self, req: RerankRequest) -> RerankResult:
        self._require("rerank")
        path = self._manifest.options.rerank_path or ""
        style = self._manifest.options.rerank_style
        payload = await self._request("POST", path, rerank_body(req, style), "rerank")
        results, usage = read_rerank(payload, style, req, self._what)
        return RerankResult(model=req.model, results=results, method="upstream", usage=usage)

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- requests -----------------------------------------------------------------

    async def _embed_chunk(self, req: EmbedRequest, texts: tuple[str, ...]) -> tuple[list[list[float]], int]:
        body: dict[str, Any] = {"model": req.model, "input": list(texts), "encoding_format": self._embed_encoding()}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        payload = await self._request("POST", "/v1/embeddings", body, "embed")
        return read_vectors(payload, len(texts), req.dimensions, self._what)

    async def _chat_stream(
        self, req: ChatRequest, body: dict[str, Any], started: float, progress: ProgressFn
    ) -> ChatResult:
        """Streamed chat: each content delta is reported through `progress` (the token count so far)."""
        stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        parts: list[str] = []
        finish: FinishReason = "stop"
        usage = Usage()
        first: float | None = None
        what = f"{self._what} chat"
        async with _http.stream_lines(
            self._http(), "POST", "/v1/chat/completions", what, body=stream_body, redact=self._redact
        ) as lines:
            async for line in lines:
                event = read_stream_event(line, self._what)
                if event is None:
                    continue
                if event.done:
                    break
                if event.text:
                    first = first if first is not None else time.perf_counter()
                    parts.append(event.text)
                    await progress(float(len(parts)), float(req.max_tokens) if req.max_tokens else None, None)
                finish = event.finish_reason or finish
                usage = event.usage or usage
        return ChatResult(
            model=req.model,
            content="".join(parts),
            finish_reason=finish,
            usage=usage,
            timings=_timings(started, first, usage),
        )

    async def _request(self, method: str, path: str, body: Any, op: str) -> Any:
        what = f"{self._what} {op}"
        return await self._with_retries(
            lambda: _http.request_json(self._http(), method, path, what, body=body, redact=self._redact)
        )

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]]) -> T:
        for tries in range(MAX_RETRIES + 1):
            started = anyio.current_time()
            try:
                return await attempt()
            except AdapterError as err:
                delay = self._retry_delay(err, tries, anyio.current_time() - started)
                if delay is None:
                    raise
            await anyio.sleep(delay)
        raise AssertionError("unreachable: the last try raises or returns")

    def _retry_delay(self, err: AdapterError, tries: int, took: float) -> float | None:
        """Seconds to wait before the next try, or None when the error must go to the caller now."""
        if tries >= MAX_RETRIES:
            return None
        status = err.status if isinstance(err, UpstreamStatusError) else None
        if not ((status is not None and err.retryable) or _http.is_connect_failure(err)):
            return None
        retry_after = err.retry_after_s if isinstance(err, UpstreamStatusError) else None
        delay = retry_after if retry_after is not None else _BACKOFF_BASE_S * 2**tries * random.uniform(0.5, 1.5)
        remaining = anyio.current_effective_deadline() - anyio.current_time()
        # A retry needs the wait plus about as long as the failed try took; one that cannot finish is not started.
        if delay > _MAX_SLEEP_S or delay + took > remaining:
            return None
        return delay

    def _http(self) -> _http.HTTPClient:
        if self._closed:
            raise AdapterUnavailableError(f"{self._what}: adapter is closed")
        if self._client is None:
            self._client = _http.build_client(
                self._manifest.endpoint, self._limits, headers=self._headers(), http2=self._manifest.http2
            )
        return self._client

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._secret is not None:
            headers["Authorization"] = f"Bearer {self._secret.get_secret_value()}"
        elif self._manifest.api_key_env and not _http.is_loopback_url(self._manifest.endpoint):
            raise AdapterUnavailableError(
                f"{self._what}: no API key; set the environment variable {self._manifest.api_key_env}"
            )
        if self._manifest.options.organization:
            headers["OpenAI-Organization"] = self._manifest.options.organization
        return headers

    def _redact(self, text: str) -> str:
        if self._secret is not None and (value := self._secret.get_secret_value()):
            text = text.replace(value, "[redacted]")
        return _TOKEN_LIKE.sub("[redacted]", text)

    def _embed_encoding(self) -> str:
        choice = self._manifest.options.embed_encoding
        if choice == "auto":
            return "base64" if urlsplit(self._manifest.endpoint).hostname in _BASE64_HOSTS else "float"
        return choice

    def _require(self, capability: Capability) -> None:
        if capability not in self.info.capabilities:
            raise CapabilityError(f"{self._what} does not serve {capability}")


def _declared(manifest: OpenAIManifest) -> frozenset[Capability]:
    served: set[Capability] = {"chat", "embed"}
    if manifest.options.rerank_path:
        served.add("rerank")
    if manifest.models:
        return frozenset({c for m in manifest.models for c in m.capabilities} & served)
    return frozenset(served)


def _guess(model: str) -> frozenset[Capability]:
    """Capabilities of a listed model the manifest does not declare, from its name."""
    name = model.lower()
    if "rerank" in name:
        return frozenset({"rerank"})
    if "embed" in name or "minilm" in name or "bge" in name or "e5-" in name:
        return frozenset({"embed"})
    return frozenset({"chat"})


def _timings(started: float, first: float | None, usage: Usage) -> ChatTimings:
    now = time.perf_counter()
    ttft = (first - started) * 1000.0 if first is not None else None
    decode_s = now - first if first is not None else 0.0
    tps = usage.output_tokens / decode_s if usage.output_tokens and decode_s > 0 else None
    return ChatTimings(total_ms=(now - started) * 1000.0, time_to_first_token_ms=ttft, tokens_per_second=tps)
