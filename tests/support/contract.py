"""Reusable checks every adapter must pass, whatever its backend.

Call them from an adapter's own tests with a live adapter and a model name per
declared capability:

    await check_contract(adapter, {"embed": "toy-embed", "chat": "toy-chat"})

They assert shapes, never content (tiny test models answer nonsense).
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import pytest

from adapters.base import Adapter
from adapters.errors import AdapterError, CapabilityError
from adapters.naming import canonical_model
from adapters.types import (
    CAPABILITIES,
    Capability,
    ChatMessage,
    ChatRequest,
    EmbedRequest,
    RerankRequest,
)

TEXTS = ("the quick brown fox", "a lazy dog sleeps")
DOCUMENTS = ("foxes are quick", "dogs sleep a lot", "the stock market fell")


async def check_declared_capabilities_work(adapter: Adapter, models: Mapping[Capability, str]) -> None:
    """Every declared capability answers a small request with a well-formed result."""
    for capability in sorted(adapter.info.capabilities):
        model = models[capability]
        if capability == "embed":
            await _check_embed(adapter, model)
        elif capability == "rerank":
            await _check_rerank(adapter, model)
        else:
            await _check_chat(adapter, model)


async def check_undeclared_capabilities_refused(adapter: Adapter) -> None:
    """A capability the adapter does not declare fails fast with a non-retryable CapabilityError."""
    for capability in set(CAPABILITIES) - adapter.info.capabilities:
        with pytest.raises(CapabilityError) as caught:
            if capability == "embed":
                await adapter.embed(EmbedRequest(model="any", texts=TEXTS))
            elif capability == "rerank":
                await adapter.rerank(RerankRequest(model="any", query="q", documents=DOCUMENTS))
            else:
                await adapter.chat(ChatRequest(model="any", messages=(ChatMessage("user", "hi"),)))
        assert caught.value.retryable is False
        assert capability in str(caught.value)


async def check_aclose_idempotent(adapter: Adapter, models: Mapping[Capability, str]) -> None:
    """aclose() can be called twice, and calls after it fail with an adapter error, not a crash or a hang."""
    await adapter.aclose()
    await adapter.aclose()
    capability = sorted(adapter.info.capabilities)[0]
    with anyio.fail_after(10), pytest.raises(AdapterError):
        if capability == "embed":
            await adapter.embed(EmbedRequest(model=models[capability], texts=TEXTS))
        elif capability == "rerank":
            await adapter.rerank(RerankRequest(model=models[capability], query="q", documents=DOCUMENTS))
        else:
            await adapter.chat(ChatRequest(model=models[capability], messages=(ChatMessage("user", "hi"),)))


def check_model_identity(adapter: Adapter, models: Mapping[Capability, str]) -> None:
    """Canonical names are idempotent, and every model the adapter describes keeps its identity."""
    for name in [*models.values(), *(m.name for m in adapter.info.models)]:
        once = canonical_model(adapter, name)
        assert isinstance(once, str) and once
        assert canonical_model(adapter, once) == once


async def check_contract(adapter: Adapter, models: Mapping[Capability, str]) -> None:
    """All contract checks in order; closes the adapter."""
    assert isinstance(adapter, Adapter)
    check_model_identity(adapter, models)
    await check_declared_capabilities_work(adapter, models)
    await check_undeclared_capabilities_refused(adapter)
    await check_aclose_idempotent(adapter, models)


async def _check_embed(adapter: Adapter, model: str) -> None:
    result = await adapter.embed(EmbedRequest(model=model, texts=TEXTS))
    assert len(result.vectors) == len(TEXTS)
    assert result.dimensions > 0
    assert all(len(v) == result.dimensions for v in result.vectors)
    assert all(isinstance(x, float) for x in result.vectors[0])


async def _check_rerank(adapter: Adapter, model: str) -> None:
    result = await adapter.rerank(RerankRequest(model=model, query="quick fox", documents=DOCUMENTS, top_n=2))
    assert 0 < len(result.results) <= 2
    assert all(0 <= r.index < len(DOCUMENTS) for r in result.results)
    assert len({r.index for r in result.results}) == len(result.results)
    scores = [r.relevance_score for r in result.results]
    assert scores == sorted(scores, reverse=True)


async def _check_chat(adapter: Adapter, model: str) -> None:
    req = ChatRequest(model=model, messages=(ChatMessage("user", "Say hello."),), max_tokens=8, temperature=0.0)
    result = await adapter.chat(req)
    assert isinstance(result.content, str)
    assert result.finish_reason in ("stop", "length", "cancelled", "error")
    assert result.timings.total_ms >= 0
    assert result.usage.input_tokens >= 0 and result.usage.output_tokens >= 0
