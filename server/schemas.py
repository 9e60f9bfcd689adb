"""Published shapes of tool results (outputSchema) and of chat messages.

Vectors are `list[Any]` on purpose: a per-float item schema makes clients
validate every float (~140 ms at 64 x 384).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

MAX_MESSAGE_CHARS = 200_000


class UsageOut(BaseModel):
    input_tokens: int
    output_tokens: int = 0


class AttemptOut(BaseModel):
    adapter: str
    model: str
    outcome: Literal["ok", "failed", "rejected", "skipped"]
    latency_ms: float
    error: str | None = None


class EmbedOutput(BaseModel):
    model: str
    adapter: str
    dimensions: int
    count: int
    embeddings: list[Any] | None = Field(
        None, description="One array of floats per input, in input order (encoding 'float')."
    )
    embeddings_b64: str | None = Field(
        None, description="count x dimensions little-endian float32, row-major, base64 (encoding 'base64')."
    )
    truncated: int = Field(0, description="Inputs cut at the model's maximum input length.")
    usage: UsageOut
    route: list[AttemptOut]


class RerankItem(BaseModel):
    index: int
    relevance_score: float
    document: str | None = None


class RerankOutput(BaseModel):
    model: str
    adapter: str
    method: str = Field(description="How scores were made: cross-encoder, bi-encoder-cosine or upstream.")
    results: list[RerankItem]
    usage: UsageOut
    route: list[AttemptOut]


class MessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class MessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TimingsOut(BaseModel):
    total_ms: float
    time_to_first_token_ms: float | None = None
    tokens_per_second: float | None = None


class ChatOutput(BaseModel):
    model: str
    adapter: str
    message: MessageOut
    finish_reason: str
    usage: UsageOut
    timings: TimingsOut
    route: list[AttemptOut]


class ModelEntry(BaseModel):
    name: str = Field(description="Routable name: 'adapter/model'.")
    adapter: str
    model: str
    capabilities: list[str]
    privacy: Literal["local", "remote"]
    status: Literal["up", "down", "unknown"]
    routable: bool = Field(description="False when privacy mode or a breaker excludes it now.")


class ModelsOutput(BaseModel):
    models: list[ModelEntry]
    aliases: dict[str, list[str]]
    privacy_mode: bool
