"""The MCP surface: chat, embed, rerank, models tools and the health resource.

Docstrings and Field descriptions are the contract with the model: what the
tool does, units and limits. Results carry structured content plus ONE compact
JSON text block; vectors are never published with a per-float item schema
(a client validating 24,576 floats costs ~140 ms at 64 vectors).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from array import array
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import orjson
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import Field

from adapters.base import Adapter
from adapters.errors import UpstreamProtocolError
from adapters.types import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    ProgressFn,
    RerankRequest,
    RerankResult,
)
from server.errors import GatewayError
from server.health import StateRef, health_report, models_listing
from server.logs import register_set_level
from server.middleware import argument_errors
from server.pipeline import Call, Outcome, run_call
from server.privacy import register_privacy
from server.router import Attempt, Candidate
from server.schemas import ChatOutput, EmbedOutput, MessageIn, ModelsOutput, RerankOutput
from server.state import AppState

T = TypeVar("T")
MAX_TEXTS = 2048
MAX_TEXT_CHARS = 32768
MAX_DOCUMENTS = 1000
MAX_MESSAGES = 256
ModelName = Annotated[
    str | None,
    Field(
        None,
        max_length=200,
        description="'adapter/model', a bare model name, or an alias such as 'default'. Omit for the default route.",
    ),
]


def _route(attempts: list[Attempt]) -> list[dict[str, Any]]:
    return [
        {"adapter": a.adapter, "model": a.model, "outcome": a.outcome, "latency_ms": a.latency_ms, "error": a.error}
        for a in attempts
    ]


def _result(structured: dict[str, Any], encoded: dict[str, bytes] | None = None) -> CallToolResult:
    """Structured content plus the same as one compact JSON text block.

    `encoded` holds fields already encoded as JSON (the vectors, encoded once for the audit hash):
    the text block splices them in instead of encoding them again.
    """
    fields = {k: orjson.Fragment(v) for k, v in encoded.items()} if encoded else {}
    text = orjson.dumps({**structured, **fields} if fields else structured).decode()  # ~20x the stdlib
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


def _state(ctx: Context) -> AppState:
    state = ctx.request_context.lifespan_context
    assert isinstance(state, AppState)
    return state


def _wants_progress(ctx: Context) -> bool:
    """Did the client ask for progress? JSON-RPC carries a token in _meta; the in-process client a callback."""
    meta: Any = ctx.request_context.meta
    if isinstance(meta, dict) and meta.get("progressToken") is not None:
        return True
    # The SDK has no public "progress requested" flag: look at its dispatch context (wrapped once per layer).
    outbound = getattr(ctx.request_context.session, "_request_outbound", None)
    for _ in range(4):
        if outbound is None:
            return False
        if getattr(outbound, "_on_progress", None) is not None or getattr(outbound, "_progress_token", None):
            return True
        outbound = getattr(outbound, "_inner", None)
    return False


def _progress(ctx: Context) -> ProgressFn | None:
    if not _wants_progress(ctx):
        return None

    async def report(done: float, total: float | None, message: str | None) -> None:
        await ctx.report_progress(done, total, message)

    return report


async def _run(
    state: AppState,
    call: Call,
    invoke: Callable[[Adapter, Candidate], Awaitable[T]],
    deadline_s: float,
    evidence: Callable[[T], Any],
) -> Outcome[T]:
    try:
        return await run_call(state, call, invoke, deadline_s, evidence)
    except GatewayError as exc:
        raise ToolError(exc.message) from exc


class _EmbedEvidence:
    """What the audit hashes for an embed response: the model and every vector.

    The vectors' JSON (~0.6 ms at 64 x 384) is kept for the result's text block, which splices it in.
    """

    def __init__(self) -> None:
        self.vectors_json: bytes | None = None

    def __call__(self, result: EmbedResult) -> dict[str, Any]:
        self.vectors_json = orjson.dumps(result.vectors)
        return {"model": result.model, "vectors_sha256": hashlib.sha256(self.vectors_json).hexdigest()}


def _vectors_payload(result: EmbedResult, encoding: str) -> dict[str, Any]:
    if encoding == "base64":
        packed = array("f")
        for vector in result.vectors:
            packed.extend(vector)
        if sys.byteorder == "big":
            packed.byteswap()
        return {"embeddings": None, "embeddings_b64": base64.b64encode(packed.tobytes()).decode("ascii")}
    return {"embeddings": [v if isinstance(v, list) else list(v) for v in result.vectors], "embeddings_b64": None}


def register_tools(server: MCPServer[AppState], ref: StateRef) -> None:
    server.middleware.append(argument_errors)
    register_privacy(server, ref)
    register_set_level(server)

    @server.tool(structured_output=True)
    async def embed(
        ctx: Context,
        input: Annotated[
            Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
            | Annotated[
                list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]],
                Field(min_length=1, max_length=MAX_TEXTS),
            ],
            Field(description=f"A text or a list of up to {MAX_TEXTS} texts ({MAX_TEXT_CHARS} characters each)."),
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
        state = _state(ctx)
        texts = (input,) if isinstance(input, str) else tuple(input)
        call = Call(
            "embed",
            "embed",
            model,
            state.settings.principal,
            {"input": list(texts), "model": model, "dimensions": dimensions},
            texts=len(texts),
            chars=sum(map(len, texts)),
        )
        progress = _progress(ctx)

        async def invoke(adapter: Adapter, c: Candidate) -> EmbedResult:
            req = EmbedRequest(model=c.model, texts=texts, dimensions=dimensions, progress=progress)
            result = await state.coalescer.embed(adapter, req, adapter.embed)
            if len(result.vectors) != len(texts):
                raise UpstreamProtocolError(f"{c.label} returned {len(result.vectors)} vectors for {len(texts)} texts")
            return result

        evidence = _EmbedEvidence()
        out = await _run(state, call, invoke, state.settings.manifests.performance.deadlines.embed_s, evidence)
        r: EmbedResult = out.value
        vectors_json = evidence.vectors_json if encoding == "float" else None
        return _result(
            {
                "model": r.model,
                "adapter": out.candidate.adapter,
                "dimensions": r.dimensions,
                "count": len(r.vectors),
                **_vectors_payload(r, encoding),
                "truncated": r.truncated,
                "usage": {"input_tokens": r.usage.input_tokens, "output_tokens": 0},
                "route": _route(out.attempts),
            },
            {"embeddings": vectors_json} if vectors_json is not None else None,
        )

    @server.tool(structured_output=True)
    async def rerank(
        ctx: Context,
        query: Annotated[
            str, Field(min_length=1, max_length=MAX_TEXT_CHARS, description="What the documents are ranked against.")
        ],
        documents: Annotated[
            list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]],
            Field(min_length=1, max_length=MAX_DOCUMENTS, description=f"Up to {MAX_DOCUMENTS} candidate texts."),
        ],
        top_n: Annotated[int | None, Field(None, ge=1, le=MAX_DOCUMENTS, description="Return only the best N.")] = None,
        model: ModelName = None,
        return_documents: Annotated[bool, Field(description="Echo each document's text in the results.")] = False,
    ) -> Annotated[CallToolResult, RerankOutput]:
        """Rank documents by relevance to a query, best first.

        Each result has the document's index in the input list and a relevance
        score (higher is more relevant; scale depends on `method`).
        """
        state = _state(ctx)
        call = Call(
            "rerank",
            "rerank",
            model,
            state.settings.principal,
            {"query": query, "documents": documents, "top_n": top_n, "model": model},
            documents=len(documents),
            chars=len(query) + sum(map(len, documents)),
        )

        async def invoke(adapter: Adapter, c: Candidate) -> RerankResult:
            return await adapter.rerank(RerankRequest(c.model, query, tuple(documents), top_n))

        out = await _run(
            state,
            call,
            invoke,
            state.settings.manifests.performance.deadlines.rerank_s,
            lambda r: [(s.index, s.relevance_score) for s in r.results],
        )
        r: RerankResult = out.value
        items = [
            {
                "index": s.index,
                "relevance_score": s.relevance_score,
                **({"document": documents[s.index]} if return_documents else {}),
            }
            for s in r.results
        ]
        return _result(
            {
                "model": r.model,
                "adapter": out.candidate.adapter,
                "method": r.method,
                "results": items,
                "usage": {"input_tokens": r.usage.input_tokens, "output_tokens": 0},
                "route": _route(out.attempts),
            }
        )

    @server.tool(structured_output=True)
    async def chat(
        ctx: Context,
        messages: Annotated[
            list[MessageIn],
            Field(min_length=1, max_length=MAX_MESSAGES, description="The conversation so far, oldest first."),
        ],
        model: ModelName = None,
        max_tokens: Annotated[
            int | None, Field(None, ge=1, le=32768, description="Upper bound on generated tokens.")
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
        state = _state(ctx)
        msgs = tuple(ChatMessage(m.role, m.content) for m in messages)
        call = Call(
            "chat",
            "chat",
            model,
            state.settings.principal,
            {
                "messages": [[m.role, m.content] for m in msgs],
                "model": model,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stop": stop,
            },
            texts=len(msgs),
            chars=sum(len(m.content) for m in msgs),
            max_tokens=max_tokens or 0,
        )
        progress = _progress(ctx)

        async def invoke(adapter: Adapter, c: Candidate) -> ChatResult:
            return await adapter.chat(ChatRequest(c.model, msgs, max_tokens, temperature, tuple(stop or ()), progress))

        out = await _run(
            state,
            call,
            invoke,
            state.settings.manifests.performance.deadlines.chat_s,
            lambda r: {"content": r.content, "finish_reason": r.finish_reason},
        )
        r: ChatResult = out.value
        t = r.timings
        return _result(
            {
                "model": r.model,
                "adapter": out.candidate.adapter,
                "message": {"role": "assistant", "content": r.content},
                "finish_reason": r.finish_reason,
                "usage": {"input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens},
                "timings": {
                    "total_ms": t.total_ms,
                    "time_to_first_token_ms": t.time_to_first_token_ms,
                    "tokens_per_second": t.tokens_per_second,
                },
                "route": _route(out.attempts),
            }
        )

    @server.tool()
    async def models(ctx: Context) -> ModelsOutput:
        """List every routable model: adapter, capabilities, privacy class and status."""
        return models_listing(_state(ctx))

    @server.resource("gateway://health", mime_type="application/json")
    async def health() -> str:
        """Per-adapter status, last probe, latency, error, breaker state and snapshot age."""
        return json.dumps(health_report(ref.get()), separators=(",", ":"))
