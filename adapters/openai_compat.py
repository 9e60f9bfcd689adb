"""OpenAI-compatible adapter: OpenAI, vLLM, TGI, TEI, Infinity, mlx_lm.server and friends.

Built on the kit (adapters/kit.py): one pooled client built on first use (the
constructor does no I/O), answers size-capped and decoded off the event loop when
large, vectors checked against the model's width, the kit's one retry policy. The
API key travels only in the Authorization header; provider text is redacted whole
before any message holds it (and only then cut).

Servers people run do not all list their models: text-embeddings-inference has no
`/v1/models`, and `mlx_lm.server` answers 500 there without a Hugging Face cache
folder. When the listing fails but the server answered and the manifest declares
models, the adapter stays usable with its declared models ("declared, unverified"
in the probe's details); the next probe that gets a listing verifies them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio

from adapters import _http
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
from adapters.errors import (
    AdapterError,
    AdapterTimeoutError,
    AdapterUnavailableError,
    UpstreamStatusError,
    safe_detail,
)
from adapters.kit import HTTPAdapter, declared_models, pinned_dimensions
from adapters.manifest import OpenAIManifest
from adapters.naming import capabilities_from_name
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

# Hosts whose /v1/embeddings is known to accept encoding_format=base64.
_BASE64_HOSTS = frozenset({"api.openai.com"})
# A listing refused for these reasons means calls will be refused too: the adapter is down, not unverified.
_AUTH_STATUSES = frozenset({401, 403})
DECLARED_UNVERIFIED = "declared, unverified"


class OpenAIAdapter(HTTPAdapter):
    kind = "openai"
    embed_concurrency = 4

    def __init__(self, manifest: OpenAIManifest, context: AdapterContext) -> None:
        self._manifest = manifest
        self._secret = context.secrets.get(manifest.api_key_env) if manifest.api_key_env else None
        endpoint = _http.redact_url(manifest.endpoint)
        info = AdapterInfo(
            manifest.name, "openai", manifest.privacy, _declared(manifest), declared_models(manifest.models), endpoint
        )
        options = _http.UpstreamOptions(
            headers=self._headers,
            http2=manifest.http2,
            redact=self._redact,
            max_response_bytes=manifest.max_response_bytes,
        )
        upstream = _http.HTTPUpstream(
            manifest.endpoint, context.limits, describe=f"openai adapter '{manifest.name}'", options=options
        )
        pinned = pinned_dimensions(manifest.models)
        super().__init__(info, context, upstream, pinned=pinned, batch_limit=manifest.options.batch_limit)

    # --- the Adapter protocol -------------------------------------------------------

    async def probe(self) -> ProbeResult:
        try:
            with anyio.fail_after(self.limits.probe_deadline_s):
                names = await self.http.call("GET", "/v1/models", f"{self.describe} models", parse=read_models)
        except TimeoutError:
            return ProbeResult(ok=False, error=f"{self.describe}: /v1/models did not answer in time")
        except AdapterError as exc:
            return self._unlisted(exc)
        declared = {m.name for m in self.info.models}
        listed = [ModelInfo(name=n, capabilities=capabilities_from_name(n) & self.info.capabilities) for n in names]
        extra = tuple(m for m in listed if m.name not in declared and m.capabilities)
        details = {"listed": str(len(listed)), "models": "verified" if declared else "listed"}
        return ProbeResult(ok=True, models=(*self.info.models, *extra), details=details)

    def _unlisted(self, exc: AdapterError) -> ProbeResult:
        """The listing failed: usable with the declared models when the server answered and did not refuse us."""
        unreachable = isinstance(exc, AdapterUnavailableError | AdapterTimeoutError)
        refused = isinstance(exc, UpstreamStatusError) and exc.status in _AUTH_STATUSES
        if unreachable or refused or not self.info.models:
            return ProbeResult(ok=False, error=exc.message)
        details = {"models": DECLARED_UNVERIFIED, "listing_error": safe_detail(exc.message)}
        return ProbeResult(ok=True, models=self.info.models, details=details)

    async def chat(self, req: ChatRequest) -> ChatResult:
        self.require("chat")
        started = time.perf_counter()
        body = chat_body(req)
        if req.progress is not None:
            return await self._chat_stream(req, body, started, req.progress)
        what = f"{self.describe} chat"
        content, finish, usage = await self.http.call(
            "POST", "/v1/chat/completions", what, body=body, parse=lambda answer: read_chat(answer, self.describe)
        )
        timings = ChatTimings(total_ms=(time.perf_counter() - started) * 1000.0)
        return ChatResult(model=req.model, content=content, finish_reason=finish, usage=usage, timings=timings)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        return await self.embed_in_chunks(req, lambda texts, first: self._embed_chunk(req, texts))

    async def rerank(self, req: RerankRequest) -> RerankResult:
        self.require("rerank")
        path = self._manifest.options.rerank_path or ""
        style = self._manifest.options.rerank_style
        results, usage = await self.http.call(
            "POST",
            path,
            f"{self.describe} rerank",
            body=rerank_body(req, style),
            parse=lambda answer: read_rerank(answer, style, req, self.describe),
        )
        return RerankResult(model=req.model, results=results, method="upstream", usage=usage)

    # --- requests -----------------------------------------------------------------

    async def _embed_chunk(self, req: EmbedRequest, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        body: dict[str, Any] = {"model": req.model, "input": list(texts), "encoding_format": self._embed_encoding()}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        return await self.http.call(
            "POST",
            "/v1/embeddings",
            f"{self.describe} embed",
            body=body,
            parse=lambda answer: read_vectors(answer, len(texts), self.describe),
        )

    async def _chat_stream(
        self, req: ChatRequest, body: dict[str, Any], started: float, progress: ProgressFn
    ) -> ChatResult:
        """Streamed chat: each content delta is reported through `progress` (the token count so far)."""
        stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        parts: list[str] = []
        finish: FinishReason = "stop"
        usage = Usage()
        first: float | None = None
        total = float(req.max_tokens) if req.max_tokens else None
        what = f"{self.describe} chat"
        async with self.http.stream_lines("POST", "/v1/chat/completions", what, body=stream_body) as lines:
            async for line in lines:
                event = read_stream_event(line, self.describe)
                if event is None:
                    continue
                if event.done:
                    break
                if event.text:
                    first = first if first is not None else time.perf_counter()
                    parts.append(event.text)
                    await progress(float(len(parts)), total, None)
                finish = event.finish_reason or finish
                usage = event.usage or usage
        timings = _timings(started, first, usage)
        return ChatResult(model=req.model, content="".join(parts), finish_reason=finish, usage=usage, timings=timings)

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._secret is not None:
            headers["Authorization"] = f"Bearer {self._secret.get_secret_value()}"
        elif self._manifest.api_key_env and not _http.is_loopback_url(self._manifest.endpoint):
            raise AdapterUnavailableError(
                f"{self.describe}: no API key; set the environment variable {self._manifest.api_key_env}"
            )
        if self._manifest.options.organization:
            headers["OpenAI-Organization"] = self._manifest.options.organization
        return headers

    def _redact(self, text: str) -> str:
        if self._secret is not None and (value := self._secret.get_secret_value()):
            text = text.replace(value, "[redacted]")
        return _http.redact_tokens(text)

    def _embed_encoding(self) -> str:
        choice = self._manifest.options.embed_encoding
        if choice == "auto":
            return "base64" if urlsplit(self._manifest.endpoint).hostname in _BASE64_HOSTS else "float"
        return choice


def _declared(manifest: OpenAIManifest) -> frozenset[Capability]:
    served: set[Capability] = {"chat", "embed"}
    if manifest.options.rerank_path:
        served.add("rerank")
    if manifest.models:
        return frozenset({c for m in manifest.models for c in m.capabilities} & served)
    return frozenset(served)


def _timings(started: float, first: float | None, usage: Usage) -> ChatTimings:
    now = time.perf_counter()
    ttft = (first - started) * 1000.0 if first is not None else None
    decode_s = now - first if first is not None else 0.0
    tps = usage.output_tokens / decode_s if usage.output_tokens and decode_s > 0 else None
    return ChatTimings(total_ms=(now - started) * 1000.0, time_to_first_token_ms=ttft, tokens_per_second=tps)
