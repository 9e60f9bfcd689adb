"""A small downstream MCP server that looks like another model gateway.

Tools: `embed`, `rerank`, `chat` (gateway-shaped structured results), `models`
(a gateway's model listing), `noop`,
and fault tools: `hang` (never answers), `die` (the process exits mid-call),
`fail` (an isError result). Run it over stdio (`python -m tests.support.downstream_mcp`)
or Streamable HTTP (`--http --port N`).

Knobs, read at start so a test can restart it with a different shape:
- DOWNSTREAM_VARIANT=v2 renames embed's `input` argument to `texts` (a schema change);
- DOWNSTREAM_SPAWN_LOG=path appends this process's pid to `path` at start, so
  tests can count spawns and check that no child outlives the adapter;
- DOWNSTREAM_TOOLS_TTL_MS=n sends a `ttlMs` hint with tools/list;
- DOWNSTREAM_MODELS=0 leaves the `models` tool out (a downstream that is not a model gateway).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types.methods import CacheableMethod

DIMENSIONS = 8
# What the `models` tool lists, as a model gateway names its routable models.
LISTED_MODELS = (("toy/toy-embed", ("embed",)), ("toy/toy-rerank", ("rerank",)), ("toy/toy-chat", ("chat",)))


def toy_vector(text: str) -> list[float]:
    """A deterministic, L2-normalised vector derived from the text's hash."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def spawned(log: Path) -> list[int]:
    """The pids that DOWNSTREAM_SPAWN_LOG=log recorded, in start order."""
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie awaiting its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def overlap_score(query: str, document: str) -> float:
    q = set(query.lower().split())
    d = set(document.lower().split())
    return len(q & d) / (len(q) or 1)


def _embed_result(model: str, texts: list[str]) -> dict[str, Any]:
    return {
        "model": model,
        "adapter": "downstream",
        "dimensions": DIMENSIONS,
        "count": len(texts),
        "embeddings": [toy_vector(t) for t in texts],
        "embeddings_b64": None,
        "usage": {"input_tokens": sum(len(t.split()) for t in texts), "output_tokens": 0},
        "route": ["downstream"],
    }


def _models_listing() -> dict[str, Any]:
    entries = [
        {
            "name": name,
            "adapter": name.split("/")[0],
            "model": name.split("/")[1],
            "capabilities": list(caps),
            "privacy": "local",
            "status": "up",
            "routable": True,
        }
        for name, caps in LISTED_MODELS
    ]
    return {"models": entries, "aliases": {}, "privacy_mode": False}


def build_server(variant: str, tools_ttl_ms: int | None, with_models: bool = True) -> MCPServer:
    hints: dict[CacheableMethod, CacheHint] | None = (
        {"tools/list": CacheHint(ttl_ms=tools_ttl_ms)} if tools_ttl_ms is not None else None
    )
    server: MCPServer = MCPServer("downstream-gateway", cache_hints=hints)
    _add_embed(server, variant)
    _add_rerank_and_chat(server)
    if with_models:
        _add_models(server)
    _add_fault_tools(server)
    return server


def _add_embed(server: MCPServer, variant: str) -> None:
    if variant == "v2":

        @server.tool(name="embed")
        def embed_v2(texts: list[str], model: str = "toy-embed") -> dict[str, Any]:
            """Embed texts (v2 argument names)."""
            return _embed_result(model, texts)

    else:

        @server.tool(name="embed")
        def embed(input: list[str], model: str = "toy-embed") -> dict[str, Any]:
            """Embed texts into 8-dimensional toy vectors."""
            return _embed_result(model, input)


def _add_rerank_and_chat(server: MCPServer) -> None:
    @server.tool()
    def rerank(query: str, documents: list[str], model: str = "toy-rerank", top_n: int | None = None) -> dict[str, Any]:
        """Score documents by word overlap with the query."""
        scores = [overlap_score(query, d) for d in documents]
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: top_n or len(scores)]
        return {
            "model": model,
            "adapter": "downstream",
            "method": "cross-encoder",
            "results": [{"index": i, "relevance_score": scores[i]} for i in order],
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }

    @server.tool()
    def chat(
        messages: list[dict[str, str]],
        model: str = "toy-chat",
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> dict[str, Any]:
        """Echo the last user message."""
        last = messages[-1]["content"] if messages else ""
        words = f"echo: {last}".split()
        cut = words[:max_tokens] if max_tokens else words
        return {
            "model": model,
            "adapter": "downstream",
            "message": {"role": "assistant", "content": " ".join(cut)},
            "finish_reason": "length" if len(cut) < len(words) else "stop",
            "usage": {"input_tokens": len(last.split()), "output_tokens": len(cut)},
            "timings": {"total_ms": 0.1},
        }


def _add_models(server: MCPServer) -> None:
    @server.tool()
    def models() -> dict[str, Any]:
        """List every routable model, as a model gateway does."""
        return _models_listing()


def _add_fault_tools(server: MCPServer) -> None:
    @server.tool()
    def noop() -> str:
        """Do nothing."""
        return "ok"

    @server.tool()
    async def hang() -> str:
        """Never answer (until cancelled)."""
        await anyio.sleep_forever()
        return "unreachable"

    @server.tool()
    def die() -> str:
        """Exit the whole process in the middle of the call."""
        os._exit(3)

    @server.tool()
    def fail(message: str = "bad input") -> str:
        """Return an isError result with the given message."""
        raise ToolError(message)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", action="store_true", help="serve Streamable HTTP instead of stdio")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    spawn_log = os.environ.get("DOWNSTREAM_SPAWN_LOG")
    if spawn_log:
        with open(spawn_log, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
    ttl = os.environ.get("DOWNSTREAM_TOOLS_TTL_MS")
    with_models = os.environ.get("DOWNSTREAM_MODELS", "1") != "0"
    server = build_server(os.environ.get("DOWNSTREAM_VARIANT", "v1"), int(ttl) if ttl else None, with_models)
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.port, json_response=True)
    else:
        print("downstream: serving stdio", file=sys.stderr)
        server.run("stdio")


if __name__ == "__main__":
    main()
