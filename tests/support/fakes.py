"""In-process fake adapters for router/pipeline/tool tests (never used by the product)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import anyio

from adapters.base import AdapterInfo, ModelInfo, ProbeResult
from adapters.errors import AdapterError, CapabilityError
from adapters.types import (
    Capability,
    ChatRequest,
    ChatResult,
    ChatTimings,
    EmbedRequest,
    EmbedResult,
    Privacy,
    RerankRequest,
    RerankResult,
    Usage,
    rank,
)

DIM = 8


def fake_vector(text: str, dim: int = DIM) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b - 127.5 for b in digest[:dim]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


class FakeAdapter:
    """Deterministic backend; `fail_with` makes every call raise, `delay_s` makes it slow."""

    def __init__(
        self,
        name: str,
        models: dict[str, set[Capability]] | None = None,
        privacy: Privacy = "local",
        probe_ok: bool = True,
        probe_delay_s: float = 0.0,
    ) -> None:
        models = models or {"m": {"chat", "embed", "rerank"}}
        infos = tuple(ModelInfo(n, frozenset(c)) for n, c in models.items())
        caps: frozenset[Capability] = frozenset().union(*(m.capabilities for m in infos))
        self.info = AdapterInfo(name, "fake", privacy, caps, infos)
        self.probe_ok = probe_ok
        self.probe_delay_s = probe_delay_s
        self.fail_with: Callable[[], AdapterError] | None = None
        self.delay_s = 0.0
        self.calls: list[tuple[str, int]] = []
        self.probes = 0
        self.closed = 0
        self.probe_started = anyio.Event()
        self.entered = anyio.Event()
        self.cancelled = 0
        self.cancel_seen = anyio.Event()
        self.unlisted: tuple[str, ...] = ()  # declared models the probe says the server does not list

    async def probe(self) -> ProbeResult:
        self.probes += 1
        self.probe_started.set()
        await anyio.sleep(self.probe_delay_s)
        error = None if self.probe_ok else "refused"
        return ProbeResult(ok=self.probe_ok, models=self.info.models, error=error, unlisted=self.unlisted)

    async def _enter(self, capability: Capability, model: str, n: int) -> None:
        self.calls.append((capability, n))
        self.entered.set()
        if capability not in self.info.capabilities:
            raise CapabilityError(f"{self.info.name} does not serve {capability}")
        if self.delay_s:
            try:
                await anyio.sleep(self.delay_s)
            except anyio.get_cancelled_exc_class():
                self.cancelled += 1
                self.cancel_seen.set()
                raise
        if self.fail_with is not None:
            raise self.fail_with()

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        await self._enter("embed", req.model, len(req.texts))
        return EmbedResult(req.model, [fake_vector(t) for t in req.texts], Usage(input_tokens=len(req.texts)))

    async def rerank(self, req: RerankRequest) -> RerankResult:
        await self._enter("rerank", req.model, len(req.documents))
        q = set(req.query.lower().split())
        scores = [len(q & set(d.lower().split())) / (len(q) or 1) for d in req.documents]
        return RerankResult(req.model, rank(scores, req.top_n), "bi-encoder-cosine", Usage(input_tokens=1))

    async def chat(self, req: ChatRequest) -> ChatResult:
        await self._enter("chat", req.model, len(req.messages))
        words = req.messages[-1].content.split()
        limit = req.max_tokens or len(words)
        if req.progress is not None:
            for n in range(1, min(limit, len(words)) + 1):
                await req.progress(n, limit, f"{n} tokens")
        text = " ".join(words[:limit])
        reason = "length" if len(words) > limit else "stop"
        return ChatResult(
            req.model, f"echo: {text}", reason, Usage(len(words), min(limit, len(words))), ChatTimings(1.0)
        )

    async def aclose(self) -> None:
        self.closed += 1
