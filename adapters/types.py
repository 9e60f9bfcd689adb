"""Requests and results that cross the adapter seam.

Frozen dataclasses: the router and pipeline build requests, adapters return
results, and nothing mutates either on the way back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Capability = Literal["chat", "embed", "rerank"]
CAPABILITIES: tuple[Capability, ...] = ("chat", "embed", "rerank")
Privacy = Literal["local", "remote"]
FinishReason = Literal["stop", "length", "cancelled", "error"]

# progress(done, total, message): adapters report long work through this;
# the server turns it into MCP progress notifications when the client asked.
ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    progress: ProgressFn | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ChatTimings:
    total_ms: float
    time_to_first_token_ms: float | None = None
    tokens_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    model: str
    content: str
    finish_reason: FinishReason
    usage: Usage
    timings: ChatTimings


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    model: str
    texts: tuple[str, ...]
    dimensions: int | None = None
    progress: ProgressFn | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """One vector per input text, in input order.

    `truncated` counts inputs cut at the model's maximum length.
    """

    model: str
    vectors: Sequence[Sequence[float]]
    usage: Usage
    truncated: int = 0
    max_input_tokens: int | None = None

    @property
    def dimensions(self) -> int:
        return len(self.vectors[0]) if self.vectors else 0


@dataclass(frozen=True, slots=True)
class RerankRequest:
    model: str
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None


@dataclass(frozen=True, slots=True)
class RerankScore:
    index: int
    relevance_score: float


RerankMethod = Literal["cross-encoder", "bi-encoder-cosine", "upstream"]


@dataclass(frozen=True, slots=True)
class RerankResult:
    """Scores sorted best first; at most top_n of them when top_n was given."""

    model: str
    results: tuple[RerankScore, ...]
    method: RerankMethod
    usage: Usage


def rank(scores: Sequence[float], top_n: int | None) -> tuple[RerankScore, ...]:
    """Sort (index, score) pairs best first, stable on ties, cut at top_n."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_n is not None:
        order = order[:top_n]
    return tuple(RerankScore(index=i, relevance_score=float(scores[i])) for i in order)
