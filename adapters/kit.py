"""The adapter kit: what every backend shares, so a new one is its wire mapping plus a manifest class.

- `AdapterBase`: the lifecycle (`aclose` idempotent and shielded, calls after it fail
  with a retryable error), the capability guard, canonical model identity (names as
  given unless the kind overrides `canonical_model`), vector bounds (adapters/_vectors.py)
  and chunked embeds at a concurrency each kind declares (`embed_concurrency`).
- `HTTPAdapter`: `AdapterBase` plus one `HTTPUpstream` (adapters/_http.py): the pooled
  client, size-capped answers decoded off the event loop, redaction of provider text.
- Retries: one policy for every adapter, in adapters/_retry.py, with the reason the router
  owns fallback. Capability by name: one rule, `adapters.naming.capabilities_from_name`.

A kind subclasses one of these, maps requests and answers to its wire, and sets `kind`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import ClassVar

import anyio

from adapters._batch import map_chunks
from adapters._http import HTTPUpstream
from adapters._vectors import VectorBounds
from adapters.base import AdapterContext, AdapterInfo, ModelInfo
from adapters.errors import AdapterUnavailableError, CapabilityError
from adapters.manifest import ModelSpec
from adapters.types import Capability, EmbedRequest, EmbedResult, Usage

# send(texts, index of the first text) -> (vectors in input order, input tokens)
ChunkSender = Callable[[Sequence[str], int], Awaitable[tuple[list[list[float]], int]]]


def declared_models(specs: Sequence[ModelSpec]) -> tuple[ModelInfo, ...]:
    return tuple(ModelInfo(name=s.name, capabilities=frozenset(s.capabilities), dimensions=s.dimensions) for s in specs)


def pinned_dimensions(specs: Sequence[ModelSpec]) -> dict[str, int]:
    return {s.name: s.dimensions for s in specs if s.dimensions is not None}


class AdapterBase:
    """Lifecycle, guards and shared helpers of every adapter kind."""

    kind: ClassVar[str] = ""
    # Chunks of one embed call in flight at once against this kind of upstream.
    embed_concurrency: ClassVar[int] = 1
    # The longest `aclose` waits for resources to be released, even when its caller is cancelled.
    close_grace_s: ClassVar[float] = 5.0

    def __init__(
        self, info: AdapterInfo, context: AdapterContext, *, pinned: Mapping[str, int], batch_limit: int | None = None
    ) -> None:
        self.info = info
        self.limits = context.limits
        self.describe = f"{info.kind} adapter '{info.name}'"
        self.batch_limit = batch_limit or context.limits.batch_limit
        self.vectors = VectorBounds(pinned, self.canonical_model, context.limits.max_dimensions)
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.info.name!r}, endpoint={self.info.endpoint!r})"

    def canonical_model(self, name: str) -> str:
        """The one spelling of `name` on this backend (idempotent). Kinds whose backend folds spellings override it."""
        return name

    @property
    def closed(self) -> bool:
        return self._closed

    def require(self, capability: Capability) -> None:
        """Refuse, before any I/O, a capability the adapter does not declare, and any call after `aclose`."""
        if capability not in self.info.capabilities:
            raise CapabilityError(f"{self.describe} does not serve {capability}")
        if self._closed:
            raise AdapterUnavailableError(f"{self.describe}: adapter is closed")

    async def aclose(self) -> None:
        """Release what the adapter holds; idempotent, and completed even when the caller is cancelled."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(self.close_grace_s, shield=True):
            await self._release()

    async def _release(self) -> None:
        """What `aclose` frees; kinds holding resources override it."""

    async def embed_in_chunks(
        self, req: EmbedRequest, send: ChunkSender, *, capability: Capability = "embed"
    ) -> EmbedResult:
        """Split by `batch_limit`, send at `embed_concurrency`, check every vector, keep input order.

        `capability` is the one the call serves (a kind may rerank by embedding)."""
        self.require(capability)
        parts = await map_chunks(
            send, req.texts, size=self.batch_limit, concurrency=self.embed_concurrency, progress=req.progress
        )
        vectors = [v for chunk, _ in parts for v in chunk]
        self.vectors.check(req.model, req.dimensions, vectors, f"{self.describe} embed {req.model!r}")
        return EmbedResult(model=req.model, vectors=vectors, usage=Usage(input_tokens=sum(t for _, t in parts)))


class HTTPAdapter(AdapterBase):
    """An adapter that reaches its backend over HTTP through one `HTTPUpstream`."""

    def __init__(
        self,
        info: AdapterInfo,
        context: AdapterContext,
        upstream: HTTPUpstream,
        *,
        pinned: Mapping[str, int],
        batch_limit: int | None = None,
    ) -> None:
        super().__init__(info, context, pinned=pinned, batch_limit=batch_limit)
        self.http = upstream

    async def _release(self) -> None:
        await self.http.aclose()
