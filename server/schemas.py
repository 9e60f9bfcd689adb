"""What the model tools return: the published output models are the result types.

`run_call()` returns one of these; the tool hands it to the client with
`tool_result()`: structured content plus the same as ONE compact JSON text
block. Each result also says what the audit hashes as its evidence.

Vectors are `list[Any]` on purpose: a per-float item schema makes clients
validate every float (~140 ms at 64 x 384). Their published schema is a plain
`{"type": ["array", "null"]}`: pydantic's `anyOf` with an empty item schema
still makes a jsonschema client descend into every row (~0.27 vs 0.07 ms a
64-vector result with the SDK client).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, NotRequired

import orjson
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field, PrivateAttr, WithJsonSchema
from typing_extensions import TypedDict

# Usage, route and timings are plain objects described in words: a nested model becomes a $ref
# that every client resolves on every result (~0.1 ms a call), and an item or value schema makes a
# jsonschema client descend into each entry (~30 us of the ~80 us it spends on an embed result).
Usage = Annotated[
    dict[str, int], WithJsonSchema({"type": "object", "description": "input_tokens and output_tokens (integers)."})
]
Route = Annotated[
    list[dict[str, Any]],
    WithJsonSchema(
        {
            "type": "array",
            "description": "One object per candidate considered, in order: adapter, model, "
            "outcome (ok | failed | rejected | skipped | cached), latency_ms, error (why it was skipped or failed).",
        }
    ),
]
Timings = Annotated[
    dict[str, float | None],
    WithJsonSchema(
        {"type": "object", "description": "total_ms, time_to_first_token_ms, tokens_per_second (numbers or null)."}
    ),
]


class _Result(BaseModel):
    """A tool result: built by the call path from trusted values, so it is constructed without re-validation."""

    def structured(self) -> dict[str, Any]:
        """The structured content: the fields as they are (no per-value serialisation pass)."""
        return dict(self.__dict__)

    def evidence(self) -> Any:
        """What the audit hashes as this result's evidence."""
        raise NotImplementedError

    def tool_result(self) -> CallToolResult:
        structured = self.structured()
        text = orjson.dumps(self._text(structured)).decode()  # ~20x the stdlib
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)

    def _text(self, structured: dict[str, Any]) -> dict[str, Any]:
        return structured


class EmbedOutput(_Result):
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
    # the vectors' JSON (~0.6 ms at 64 x 384), encoded once: hashed for the audit, spliced into the text block
    _vectors_json: bytes = PrivateAttr(b"[]")

    def evidence(self) -> dict[str, Any]:
        return {"model": self.model, "vectors_sha256": hashlib.sha256(self._vectors_json).hexdigest()}

    def _text(self, structured: dict[str, Any]) -> dict[str, Any]:
        if self.embeddings is None:
            return structured
        return {**structured, "embeddings": orjson.Fragment(self._vectors_json)}


class RerankItem(TypedDict):
    index: int
    relevance_score: float
    document: NotRequired[str]


class RerankOutput(_Result):
    model: str
    adapter: str
    method: str = Field(description="How scores were made: cross-encoder, bi-encoder-cosine or upstream.")
    results: list[RerankItem]
    usage: Usage
    route: Route

    def evidence(self) -> list[tuple[int, float]]:
        return [(r["index"], r["relevance_score"]) for r in self.results]


class MessageOut(TypedDict):
    role: Literal["assistant"]
    content: str


class ChatOutput(_Result):
    model: str
    adapter: str
    message: MessageOut
    finish_reason: str
    usage: Usage
    timings: Timings
    route: Route

    def evidence(self) -> dict[str, Any]:
        return {"content": self.message["content"], "finish_reason": self.finish_reason}


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
