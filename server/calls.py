"""Typed tool calls: what a call asks for, who asks, and how its answer becomes a result.

A tool turns its MCP arguments into one of these and hands it to
`run_call()`. Each request type knows its size (for limits, policy and rate
limits), its canonical audit form, its deadline, the adapter request for one
candidate model, and how an adapter's answer becomes the published result
(server/schemas.py). The pipeline and the router never branch on the tool.
"""

from __future__ import annotations

import base64
import os
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import orjson

from adapters.types import (
    Capability,
    ChatMessage,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    ProgressFn,
    RerankRequest,
    RerankResult,
)
from server.limits import Size
from server.manifests import DeadlinesConfig
from server.router import Attempt
from server.schemas import ChatOutput, EmbedOutput, RerankItem, RerankOutput, _Result

Encoding = Literal["float", "base64"]
Out = TypeVar("Out", bound=_Result, covariant=True)


def new_call_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID (~1 vs ~3 us)
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls and under which switches: the principal, privacy mode (operator's or the session's), progress."""

    principal: str
    privacy: bool = False
    progress: ProgressFn | None = None
    call_id: str = field(default_factory=new_call_id)


class ToolCall(Protocol[Out]):
    """The shape `run_call()` takes; EmbedCall, RerankCall and ChatCall are its implementations."""

    @property
    def tool(self) -> str: ...
    @property
    def capability(self) -> Capability: ...
    @property
    def caller(self) -> Caller: ...
    @property
    def model(self) -> str | None: ...

    def size(self) -> Size: ...
    def canonical(self) -> dict[str, Any]: ...
    def deadline_s(self, deadlines: DeadlinesConfig) -> float: ...
    def adapter_request(self, model: str) -> ChatRequest | EmbedRequest | RerankRequest: ...
    def output(self, value: Any, adapter: str, attempts: Sequence[Attempt]) -> Out: ...


def _route(attempts: Sequence[Attempt]) -> list[dict[str, Any]]:
    return [a.public() for a in attempts]


@dataclass(frozen=True, slots=True)
class EmbedCall:
    tool: ClassVar[str] = "embed"
    capability: ClassVar[Capability] = "embed"
    caller: Caller
    texts: tuple[str, ...]
    model: str | None = None
    dimensions: int | None = None
    encoding: Encoding = "float"

    def size(self) -> Size:
        return Size(texts=len(self.texts), chars=sum(map(len, self.texts)))

    def canonical(self) -> dict[str, Any]:
        return {"input": list(self.texts), "model": self.model, "dimensions": self.dimensions}

    def deadline_s(self, deadlines: DeadlinesConfig) -> float:
        return deadlines.embed_s

    def adapter_request(self, model: str) -> EmbedRequest:
        return EmbedRequest(model=model, texts=self.texts, dimensions=self.dimensions, progress=self.caller.progress)

    def output(self, value: EmbedResult, adapter: str, attempts: Sequence[Attempt]) -> EmbedOutput:
        vectors = [v if isinstance(v, list) else list(v) for v in value.vectors]
        out = EmbedOutput.model_construct(
            model=value.model,
            adapter=adapter,
            dimensions=value.dimensions,
            count=len(vectors),
            embeddings=vectors if self.encoding == "float" else None,
            embeddings_b64=_packed(vectors) if self.encoding == "base64" else None,
            truncated=value.truncated,
            usage={"input_tokens": value.usage.input_tokens, "output_tokens": 0},
            route=_route(attempts),
        )
        out._vectors_json = orjson.dumps(vectors)
        return out


def _packed(vectors: list[Any]) -> str:
    """count x dimensions little-endian float32, row-major, base64."""
    packed = array("f")
    for vector in vectors:
        packed.extend(vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


@dataclass(frozen=True, slots=True)
class RerankCall:
    tool: ClassVar[str] = "rerank"
    capability: ClassVar[Capability] = "rerank"
    caller: Caller
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    model: str | None = None
    return_documents: bool = False

    def size(self) -> Size:
        return Size(documents=len(self.documents), chars=len(self.query) + sum(map(len, self.documents)))

    def canonical(self) -> dict[str, Any]:
        return {"query": self.query, "documents": list(self.documents), "top_n": self.top_n, "model": self.model}

    def deadline_s(self, deadlines: DeadlinesConfig) -> float:
        return deadlines.rerank_s

    def adapter_request(self, model: str) -> RerankRequest:
        return RerankRequest(model, self.query, self.documents, self.top_n)

    def output(self, value: RerankResult, adapter: str, attempts: Sequence[Attempt]) -> RerankOutput:
        items: list[RerankItem] = []
        for s in value.results:
            item: RerankItem = {"index": s.index, "relevance_score": s.relevance_score}
            if self.return_documents:
                item["document"] = self.documents[s.index]
            items.append(item)
        return RerankOutput.model_construct(
            model=value.model,
            adapter=adapter,
            method=value.method,
            results=items,
            usage={"input_tokens": value.usage.input_tokens, "output_tokens": 0},
            route=_route(attempts),
        )


@dataclass(frozen=True, slots=True)
class ChatCall:
    tool: ClassVar[str] = "chat"
    capability: ClassVar[Capability] = "chat"
    caller: Caller
    messages: tuple[ChatMessage, ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()

    def size(self) -> Size:
        chars = sum(len(m.content) for m in self.messages)
        n = len(self.messages)
        return Size(texts=n, messages=n, chars=chars, max_tokens=self.max_tokens or 0)

    def canonical(self) -> dict[str, Any]:
        return {
            "messages": [[m.role, m.content] for m in self.messages],
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": list(self.stop) or None,
        }

    def deadline_s(self, deadlines: DeadlinesConfig) -> float:
        return deadlines.chat_s

    def adapter_request(self, model: str) -> ChatRequest:
        return ChatRequest(model, self.messages, self.max_tokens, self.temperature, self.stop, self.caller.progress)

    def output(self, value: ChatResult, adapter: str, attempts: Sequence[Attempt]) -> ChatOutput:
        t = value.timings
        return ChatOutput.model_construct(
            model=value.model,
            adapter=adapter,
            message={"role": "assistant", "content": value.content},
            finish_reason=value.finish_reason,
            usage={"input_tokens": value.usage.input_tokens, "output_tokens": value.usage.output_tokens},
            timings={
                "total_ms": t.total_ms,
                "time_to_first_token_ms": t.time_to_first_token_ms,
                "tokens_per_second": t.tokens_per_second,
            },
            route=_route(attempts),
        )
