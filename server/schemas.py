"""Published shapes of tool results (outputSchema) and of chat messages.

Vectors are `list[Any]` on purpose: a per-float item schema makes clients
validate every float (~140 ms at 64 x 384). Their published schema is a plain
`{"type": ["array", "null"]}`: pydantic's `anyOf` with an empty item schema
still makes a jsonschema client descend into every row (~0.27 vs 0.07 ms a
64-vector result with the SDK client).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

MAX_MESSAGE_CHARS = 200_000


# Usage, route and timings are plain objects described in words: a nested model
# becomes a $ref that every client resolves on every result (~0.1 ms a call).
Usage = Annotated[dict[str, int], Field(description="input_tokens and output_tokens.")]
Route = Annotated[
    list[dict[str, Any]],
    Field(
        description="One entry per candidate considered, in order: adapter, model, "
        "outcome (ok | failed | rejected | skipped | cached), latency_ms, error (why it was skipped or failed)."
    ),
]


class EmbedOutput(BaseModel):
    model: str
    adapter: str
    dimensions: int
    count: int
    embeddings: Annotated[
        list[Any] | None,
        WithJsonSchema(
            {
                "type": ["array", "null"],
                "description": "One array of floats per input, in input order (encoding 'float').",
            }
        ),
    ] = None
    embeddings_b64: Annotated[
        str | None,
        WithJsonSchema(
            {
                "type": ["string", "null"],
                "description": "count x dimensions little-endian float32, row-major, base64 (encoding 'base64').",
            }
        ),
    ] = None
    truncated: int = Field(0, description="Inputs cut at the model's maximum input length.")
    usage: Usage
    route: Route


class RerankItem(BaseModel):
    index: int
    relevance_score: float
    document: str | None = None


class RerankOutput(BaseModel):
    model: str
    adapter: str
    method: str = Field(description="How scores were made: cross-encoder, bi-encoder-cosine or upstream.")
    results: list[RerankItem]
    usage: Usage
    route: Route


class MessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class MessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatOutput(BaseModel):
    model: str
    adapter: str
    message: MessageOut
    finish_reason: str
    usage: Usage
    timings: Annotated[
        dict[str, float | None],
        Field(description="total_ms, time_to_first_token_ms, tokens_per_second."),
    ]
    route: Route


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
