"""Structured logs: one JSON object per line, to stderr only (stdout is JSON-RPC in stdio mode).

The level comes from MODEL_GATEWAY_LOG_LEVEL and can be changed at run time by
the client's MCP `logging/setLevel`. Records carry bounded fields (tool,
adapter, outcome, latency); never prompts, texts or secrets.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import EmptyResult, SetLevelRequestParams

from server import sdk

MCP_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emergency": logging.CRITICAL,
}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure(level: str) -> None:
    """Every logger, ours and the SDK's, writes JSON lines to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("mcp", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx2"):
        other = logging.getLogger(name)
        other.handlers[:] = []
        other.propagate = True
    # one INFO line per upstream HTTP request would cost more than the request itself
    quiet = logging.DEBUG if logging.getLevelName(level) == logging.DEBUG else logging.WARNING
    for name in ("httpx2", "httpcore2", "httpcore", "mcp.client"):
        logging.getLogger(name).setLevel(quiet)


def register_set_level(server: MCPServer[Any]) -> None:
    """MCP `logging/setLevel` changes the gateway's log level (the SDK leaves this to the application)."""

    async def set_level(ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        logging.getLogger().setLevel(MCP_LEVELS.get(str(params.level), logging.INFO))
        return EmptyResult()

    # The lowlevel server is where the SDK documents re-providing logging/setLevel.
    sdk.add_request_handler(server, "logging/setLevel", SetLevelRequestParams, set_level)
