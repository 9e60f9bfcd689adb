"""MCP middleware that keeps tool errors short, clear and free of echoed input."""

from __future__ import annotations

import re
from typing import Any

from mcp_types import CallToolResult, TextContent

_PYDANTIC_ERROR = re.compile(r"^Error executing tool (\w+): \d+ validation errors? for \w+$")
_UNION_ARM = re.compile(r"\.(constrained-str|list\[constrained-str\]|str|list\[str\])")
_WRONG_ARM = {"string_type", "list_type"}


def clean_argument_error(text: str) -> str | None:
    """Pydantic's multi-line report -> one line naming each field and limit, without echoing input."""
    lines = text.splitlines()
    head = _PYDANTIC_ERROR.match(lines[0]) if lines else None
    if head is None:
        return None
    problems: dict[str, list[tuple[str, str]]] = {}
    field = "(arguments)"
    for line in lines[1:]:
        if not line.startswith(" "):
            field = _UNION_ARM.sub("", line.strip())
        elif not line.startswith("    "):
            message, _, rest = line.strip().partition(" [type=")
            problems.setdefault(field, []).append((message, rest.split(",")[0]))
    parts = []
    for name, found in problems.items():
        specific = [m for m, kind in found if kind not in _WRONG_ARM] or [m for m, _ in found[:1]]
        if len(found) > 1 and len(specific) == len(found):
            specific = specific[:1]
        parts += [f"{name}: {m}" for m in specific]
    return f"invalid arguments for {head.group(1)}: " + "; ".join(parts[:5])


def _error_text(result: Any) -> str | None:
    if isinstance(result, CallToolResult):
        first = result.content[0] if result.is_error and result.content else None
        return first.text if isinstance(first, TextContent) else None
    if isinstance(result, dict) and result.get("isError") and result.get("content"):
        first = result["content"][0]
        return first.get("text") if isinstance(first, dict) else None
    return None


async def argument_errors(ctx: Any, call_next: Any) -> Any:
    """Middleware: rewrite argument-validation failures of tools/call into clear one-line tool errors."""
    result = await call_next(ctx)
    if ctx.method != "tools/call":
        return result
    text = _error_text(result)
    cleaned = clean_argument_error(text) if text else None
    if cleaned is None:
        return result
    return CallToolResult(content=[TextContent(type="text", text=cleaned)], is_error=True)
