"""MCP over HTTP byte by byte (Streamable HTTP and legacy SSE), for tests that act as a hostile client would.

A real `mcp.Client` hides what a second principal could try with someone else's session id;
these helpers send exactly the requests named and return the raw responses.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2

PROTOCOL = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


def headers(token: str | None = None, sid: str | None = None, **extra: str) -> dict[str, str]:
    out = {"accept": ACCEPT, "content-type": "application/json", "mcp-protocol-version": PROTOCOL}
    if token is not None:
        out["authorization"] = f"Bearer {token}"
    if sid is not None:
        out["mcp-session-id"] = sid
    out.update(extra)
    return out


def initialize_message(request_id: int = 1) -> dict[str, Any]:
    params = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def tool_call(name: str, arguments: dict[str, Any], request_id: int = 2) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


async def open_session(http: httpx2.AsyncClient, url: str, token: str | None = None) -> str:
    """initialize + notifications/initialized over Streamable HTTP; the session id."""
    first = await http.post(url, json=initialize_message(), headers=headers(token))
    assert first.status_code == 200, (first.status_code, first.text[:200])
    sid = first.headers["mcp-session-id"]
    done = await http.post(url, json=INITIALIZED, headers=headers(token, sid))
    assert done.status_code == 202, (done.status_code, done.text[:200])
    return sid


async def post(
    http: httpx2.AsyncClient, url: str, message: dict[str, Any], token: str | None = None, sid: str | None = None
) -> httpx2.Response:
    return await http.post(url, json=message, headers=headers(token, sid))


@dataclass
class SseSession:
    """A legacy SSE session: its id, where to post, and every `message` event seen on its stream."""

    session_id: str
    endpoint: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    arrived: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)  # the server closed the stream

    async def wait_for(self, request_id: int, timeout_s: float = 10.0) -> dict[str, Any]:
        with anyio.fail_after(timeout_s):
            while True:
                found = [m for m in self.messages if m.get("id") == request_id]
                if found:
                    return found[0]
                self.arrived = anyio.Event()
                await self.arrived.wait()


@asynccontextmanager
async def sse_session(http: httpx2.AsyncClient, base: str, token: str | None = None) -> AsyncIterator[SseSession]:
    """GET /sse, read the endpoint event, keep reading `message` events in the background."""
    hdrs = {"accept": "text/event-stream", **({"authorization": f"Bearer {token}"} if token else {})}
    async with http.stream("GET", base + "/sse", headers=hdrs) as response, anyio.create_task_group() as tg:
        assert response.status_code == 200, response.status_code
        lines = response.aiter_lines()
        endpoint = ""
        async for line in lines:
            if line.startswith("data:"):
                endpoint = line.removeprefix("data:").strip()
                break
        session = SseSession(endpoint.split("session_id=", 1)[1], base + endpoint)

        async def pump() -> None:
            try:
                async for line in lines:
                    if line.startswith("data:"):
                        session.messages.append(json.loads(line.removeprefix("data:")))
                        session.arrived.set()
            except httpx2.HTTPError:
                pass
            session.ended.set()

        tg.start_soon(pump)
        try:
            yield session
        finally:
            tg.cancel_scope.cancel()


def with_front_door(manifests: Path, **http_server: Any) -> Path:
    """Write the shipped performance-config into a user manifests dir with `http_server` settings replaced."""
    from tests.support.processes import ROOT

    shipped = json.loads((ROOT / "manifests" / "performance-config.json").read_text())
    shipped["http_server"].update(http_server)
    (manifests / "performance-config.json").write_text(json.dumps(shipped))
    return manifests


def tokens_file(path: Path, tokens: dict[str, str]) -> Path:
    """A MODEL_GATEWAY_AUTH_TOKENS_FILE: token -> subject."""
    import hashlib

    entries = [{"sha256": hashlib.sha256(t.encode()).hexdigest(), "subject": s} for t, s in tokens.items()]
    path.write_text(json.dumps({"tokens": entries}))
    return path
