"""The HTTP edge: one state for the app's lifetime, ops routes, auth, both HTTP transports."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from server.app import Gateway
from server.http_edge import ops_routes
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server, serving_http, settings_for
from tests.support.processes import free_port

pytestmark = pytest.mark.anyio
TOKEN = "edge-test-token-0123456789"


def gateway(tmp_path: Path, transport: str, env: dict[str, Any] | None = None) -> tuple[Gateway, FakeAdapter]:
    adapter = FakeAdapter("a")
    settings = settings_for(tmp_path, routes={"routes": {"embed": ["a/m"]}}, load={"transport": transport})
    settings = dataclasses.replace(settings, port=free_port(), **(env or {}))
    return Gateway(settings, {"a": adapter}), adapter


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_the_app_holds_one_state_for_its_lifetime_and_closes_it_on_shutdown(tmp_path: Path) -> None:
    gw, adapter = gateway(tmp_path, "streamable-http")
    with anyio.fail_after(30):
        async with serving_http(gw) as base:
            opened = gw.get()
            async with Client(base + "/mcp") as first, Client(base + "/mcp", mode="legacy") as second:
                for client in (first, second):
                    assert not (await client.call_tool("embed", {"input": "x"})).is_error
            status, body = await anyio.to_thread.run_sync(get, base + "/metrics")
            assert gw.get() is opened
    assert status == 200 and b'model_gateway_tool_calls_total{outcome="ok",tool="embed"} 2.0' in body
    assert gw.state is None and adapter.closed == 1


async def test_legacy_sse_connections_share_the_apps_one_state(tmp_path: Path) -> None:
    gw, adapter = gateway(tmp_path, "sse")
    states: list[Any] = []
    with anyio.fail_after(30):
        async with serving_http(gw) as base:
            for _ in range(2):  # one SSE connection after another: the state outlives each
                async with Client(sse_client(base + "/sse")) as client:
                    assert not (await client.call_tool("embed", {"input": "x"})).is_error
                    states.append(gw.get())
            status, _ = await anyio.to_thread.run_sync(get, base + "/health")
    assert states[0] is states[1] and status == 200 and adapter.closed == 1


async def test_ops_routes_answer_gets_only_and_bearer_auth_guards_everything_but_health(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from server.principal import token_digest

    gw, _ = gateway(
        tmp_path, "streamable-http", {"auth_token": SecretStr(TOKEN), "auth_subjects": {token_digest(TOKEN): "ops"}}
    )
    with anyio.fail_after(30):
        async with serving_http(gw) as base:
            replies = {
                "health": await anyio.to_thread.run_sync(get, base + "/health"),
                "metrics without token": await anyio.to_thread.run_sync(get, base + "/metrics"),
                "metrics": await anyio.to_thread.run_sync(get, base + "/metrics", TOKEN),
                "post health": await anyio.to_thread.run_sync(get, base + "/health", TOKEN, "POST"),
                "mcp without token": await anyio.to_thread.run_sync(get, base + "/mcp"),
            }
    assert {k: v[0] for k, v in replies.items()} == {
        "health": 200,
        "metrics without token": 401,
        "metrics": 200,
        "post health": 405,
        "mcp without token": 401,
    }
    assert json.loads(replies["health"][1])["capabilities"]["embed"] is True


async def test_http_health_is_503_when_a_capability_has_no_usable_route(tmp_path: Path) -> None:
    from starlette.requests import Request

    embed_only = FakeAdapter("a", {"e": {"embed"}})
    server, ref = fake_server(tmp_path, {"a": embed_only})
    async with Client(server) as c:
        await c.call_tool("embed", {"input": "x"})
        health = next(r for r in ops_routes(ref) if r.path == "/health")
        reply = await health.endpoint(Request({"type": "http", "method": "GET", "path": "/health", "headers": []}))
    body = json.loads(reply.body)
    assert reply.status_code == 503
    assert body["capabilities"] == {"chat": False, "embed": True, "rerank": False}
    assert body["adapters"]["a"]["status"] == "up" and body["adapters"]["a"]["breaker"] == "closed"
