"""The MCP surface: chat, embed, rerank, models and privacy, as plain functions.

Each tool only translates: MCP arguments into a typed call (server/calls.py),
and the typed result back into structured content plus ONE compact JSON text
block (server/schemas.py). Docstrings and Field descriptions are the contract
with the model: what the tool does, units and limits. The limits in the
published schemas come from performance-config (`Limit` markers, resolved when
the tools are registered: server/limits.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

from adapters.types import ChatMessage
from server.calls import ChatCall, EmbedCall, RerankCall
from server.health import models_listing
from server.limits import Limit
from server.manifests import RequestLimits
from server.privacy import privacy
from server.schemas import ChatOutput, EmbedOutput, ModelsOutput, RerankOutput
from server.state import AppState
from server.toolkit import GatewayTool, gateway_tool, inbound, serve

Text = Annotated[str, Field(min_length=1), Limit("max_text_chars")]
Document = Annotated[str, Limit("max_text_chars")]
ModelName = Annotated[
    str | None,
    Field(
        None,
        max_length=200,
        description="'adapter/model', a bare model name, or an alias such as 'default'. Omit for the default route.",
    ),
]


class MessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Limit("max_message_chars")]


async def embed(
    ctx: Context[AppState],
    input: Annotated[
        Text | Annotated[list[Text], Field(min_length=1), Limit("max_texts")],
        Field(description="A text or a list of up to {max_texts} texts ({max_text_chars} characters each)."),
    ],
    model: ModelName = None,
    dimensions: Annotated[
        int | None, Field(None, ge=1, le=8192, description="Truncate vectors (models that support it).")
    ] = None,
    encoding: Annotated[
        Literal["float", "base64"], Field(description="'base64' packs little-endian float32.")
    ] = "float",
) -> Annotated[CallToolResult, EmbedOutput]:
    """Embed text into vectors for semantic search, clustering or similarity.

    Returns one vector per input text, in input order, and which adapter and
    model produced them. Send many texts in one call rather than one call per
    text: it is far faster. Use encoding 'base64' for large batches.
    """
    io = inbound(ctx, progress=True)
    texts = (input,) if isinstance(input, str) else tuple(input)
    return await serve(io.state, EmbedCall(io.caller, texts, model, dimensions, encoding))


async def rerank(
    ctx: Context[AppState],
    query: Annotated[
        str, Field(min_length=1, description="What the documents are ranked against."), Limit("max_text_chars")
    ],
    documents: Annotated[
        list[Document],
        Field(min_length=1, description="Up to {max_documents} candidate texts."),
        Limit("max_documents"),
    ],
    top_n: Annotated[
        int | None, Field(None, ge=1, description="Return only the best N."), Limit("max_documents", "le")
    ] = None,
    model: ModelName = None,
    return_documents: Annotated[bool, Field(description="Echo each document's text in the results.")] = False,
) -> Annotated[CallToolResult, RerankOutput]:
    """Rank documents by relevance to a query, best first.

    Each result has the document's index in the input list and a relevance
    score (higher is more relevant; scale depends on `method`).
    """
    io = inbound(ctx)
    return await serve(io.state, RerankCall(io.caller, query, tuple(documents), top_n, model, return_documents))


async def chat(
    ctx: Context[AppState],
    messages: Annotated[
        list[MessageIn],
        Field(min_length=1, description="The conversation so far, oldest first."),
        Limit("max_messages"),
    ],
    model: ModelName = None,
    max_tokens: Annotated[
        int | None, Field(None, ge=1, description="Upper bound on generated tokens."), Limit("max_tokens", "le")
    ] = None,
    temperature: Annotated[float | None, Field(None, ge=0, le=2, description="0 is deterministic.")] = None,
    stop: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
        Field(None, max_length=8, description="Stop generating at any of these strings."),
    ] = None,
) -> Annotated[CallToolResult, ChatOutput]:
    """Generate the next assistant message with a language model.

    Routes to a local model by default. Returns the reply, why generation
    stopped ('stop', 'length' or 'cancelled'), token usage and timings.
    """
    io = inbound(ctx, progress=True)
    msgs = tuple(ChatMessage(m.role, m.content) for m in messages)
    return await serve(io.state, ChatCall(io.caller, msgs, model, max_tokens, temperature, tuple(stop or ())))


async def models(ctx: Context[AppState]) -> ModelsOutput:
    """List every routable model: adapter, capabilities, privacy class and status."""
    io = inbound(ctx)
    return models_listing(io.state, io.caller.privacy)


def tool_list(limits: RequestLimits) -> list[GatewayTool]:
    """Every tool, with the configured limits in its schema; the model tools shed load when busy."""
    model_tools = [gateway_tool(fn, limits, sheds=True) for fn in (embed, rerank, chat)]
    return [*model_tools, gateway_tool(models, limits), gateway_tool(privacy, limits)]
