"""Capability -> adapter method: the one table the router dispatches through.

Each entry sends a typed adapter request to the adapter method that serves it
and checks the answer against what was asked (one vector per text, one score
per document at most) before it can reach a caller. A new capability is one
entry here and one request type in server/calls.py; the router never grows a
branch per capability.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from adapters.base import Adapter
from adapters.errors import UpstreamProtocolError
from adapters.types import (
    Capability,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    RerankRequest,
    RerankResult,
)

AdapterRequest = ChatRequest | EmbedRequest | RerankRequest
AdapterResult = ChatResult | EmbedResult | RerankResult
Dispatch = Callable[[Adapter, Any], Awaitable[Any]]


def check_vectors(result: EmbedResult, texts: int) -> EmbedResult:
    """One vector per text, or the answer is malformed (a retryable upstream fault)."""
    if len(result.vectors) != texts:
        raise UpstreamProtocolError(f"returned {len(result.vectors)} vectors for {texts} texts")
    return result


def check_scores(result: RerankResult, documents: int) -> RerankResult:
    """Scores name documents that exist, each at most once."""
    seen = {s.index for s in result.results}
    if len(seen) != len(result.results) or any(not 0 <= i < documents for i in seen):
        raise UpstreamProtocolError(f"returned scores for documents that were not sent ({documents} sent)")
    return result


async def _embed(adapter: Adapter, req: EmbedRequest) -> EmbedResult:
    return check_vectors(await adapter.embed(req), len(req.texts))


async def _rerank(adapter: Adapter, req: RerankRequest) -> RerankResult:
    return check_scores(await adapter.rerank(req), len(req.documents))


async def _chat(adapter: Adapter, req: ChatRequest) -> ChatResult:
    return await adapter.chat(req)


DISPATCH: Mapping[Capability, Dispatch] = {"embed": _embed, "rerank": _rerank, "chat": _chat}
