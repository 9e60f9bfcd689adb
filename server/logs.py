"""Structured logs: one JSON object per line, to stderr only (stdout is JSON-RPC in stdio mode).

The stderr level is the operator's (MODEL_GATEWAY_LOG_LEVEL) and no client can change it. A
client's MCP `logging/setLevel` sets what that client's session receives as
`notifications/message` (server/client_logs.py). Records carry bounded fields (tool, adapter,
outcome, latency); never prompts, texts or secrets. Session ids are bearer-like (whoever holds
one can use the session) and appear only at DEBUG.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# the MCP SDK's session ids: uuid4().hex on Streamable HTTP, a UUID (any spelling) on SSE
_SESSION_ID = re.compile(r"(?i)\b[0-9a-f]{32}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_LIBRARIES = ("mcp", "uvicorn", "sse_starlette", "starlette")


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


class SessionIdFilter(logging.Filter):
    """Above DEBUG, the libraries' records show `[session]` where they would print a session id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not record.name.startswith(_LIBRARIES):
            return True
        message = record.getMessage()
        masked = _SESSION_ID.sub("[session]", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure(level: str) -> None:
    """Every logger, ours and the SDK's, writes JSON lines to stderr at the operator's level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SessionIdFilter())
    # the handler holds the operator's level: the root logger goes lower while a client session asks for more
    handler.setLevel(level)
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
