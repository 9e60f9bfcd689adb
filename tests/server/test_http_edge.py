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


def request(url: str, method: str = "GET", body: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    for name, value in headers.items():
        req.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_every_path_answers_only_the_allowed_hosts_and_origins_before_anything_else(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from server.principal import token_digest

    gw, _ = gateway(
        tmp_path, "streamable-http", {"auth_token": SecretStr(TOKEN), "auth_subjects": {token_digest(TOKEN): "ops"}}
    )
    auth = f"Bearer {TOKEN}"
    with anyio.fail_after(30):
        async with serving_http(gw) as base:
            port = base.rsplit(":", 1)[1]
            tries = {
                "health, rebound name": (base + "/health", {"host": f"attacker.example:{port}"}),
                "metrics, rebound name, no token": (base + "/metrics", {"host": f"attacker.example:{port}"}),
                "metrics, foreign origin": (
                    base + "/metrics",
                    {"origin": "http://attacker.example", "authorization": auth},
                ),
                "mcp, foreign origin": (base + "/mcp", {"origin": "http://attacker.example", "authorization": auth}),
                "health, own origin": (base + "/health", {"origin": f"http://127.0.0.1:{port}"}),
            }
            got = {
                k: (await anyio.to_thread.run_sync(lambda u=u, h=h: request(u, **h)))[0] for k, (u, h) in tries.items()
            }
    assert got == {
        "health, rebound name": 421,
        "metrics, rebound name, no token": 421,  # refused before the token is even looked at
        "metrics, foreign origin": 403,
        "mcp, foreign origin": 403,
        "health, own origin": 200,
    }


async def test_the_stdio_metrics_listener_answers_only_loopback_names(tmp_path: Path) -> None:
    import uvicorn

    from server.http_edge import ops_app
    from server.http_server import uvicorn_config
    from tests.support.processes import wait_http

    gw, _ = gateway(tmp_path, "stdio")
    port = free_port()
    server = uvicorn.Server(uvicorn_config(gw.settings, ops_app(gw), port=port, lifespan=False))
    base = f"http://127.0.0.1:{port}"
    with anyio.fail_after(30):
        async with gw.running(), anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            await anyio.to_thread.run_sync(wait_http, base + "/health")
            own = await anyio.to_thread.run_sync(request, base + "/metrics")
            rebound = await anyio.to_thread.run_sync(lambda: request(base + "/metrics", host=f"evil.example:{port}"))
            server.should_exit = True
    assert own[0] == 200 and b"model_gateway_" in own[1] and rebound[0] == 421


async def test_over_http_an_unknown_method_of_100_kb_is_answered_with_the_limit_never_echoed(tmp_path: Path) -> None:
    gw, _ = gateway(tmp_path, "streamable-http")
    hdrs = {"content_type": "application/json", "accept": "application/json, text/event-stream"}
    huge = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "m" * 100_000}).encode()
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    init = json.dumps({"jsonrpc": "2.0", "id": 6, "method": "initialize", "params": params}).encode()
    with anyio.fail_after(30):
        async with serving_http(gw) as base:
            code, body = await anyio.to_thread.run_sync(lambda: request(base + "/mcp", "POST", huge, **hdrs))
            opened, _ = await anyio.to_thread.run_sync(lambda: request(base + "/mcp", "POST", init, **hdrs))
    reply = json.loads(body)
    assert code == 400 and reply["id"] == 5 and "128" in reply["error"]["message"] and len(body) < 300
    assert opened == 200  # a message within the rules goes on to the SDK


async def test_a_client_that_hangs_up_mid_call_cancels_it_where_it_runs(tmp_path: Path) -> None:
    import httpx2

    gw, adapter = gateway(tmp_path, "streamable-http")
    adapter.delay_s = 60
    hdrs = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "embed", "arguments": {"input": "x"}}}
    with anyio.fail_after(30):
        async with serving_http(gw) as base, httpx2.AsyncClient(timeout=30) as http:
            opened = await http.post(base + "/mcp", json=init, headers=hdrs)
            session = {**hdrs, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
            await http.post(
                base + "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
            )
            async with httpx2.AsyncClient(timeout=30) as caller, anyio.create_task_group() as tg:
                tg.start_soon(lambda: caller.post(base + "/mcp", json=call, headers=session))
                await adapter.entered.wait()
                tg.cancel_scope.cancel()  # the client closes its connection
            await adapter.cancel_seen.wait()
            for _ in range(500):  # the call is over once it is counted out (its finish record is written first)
                if not (await http.get(base + "/health")).json()["in_flight"]:
                    break
                await anyio.sleep(0.02)
            audit = [json.loads(line) for line in gw.get().audit.path.read_text().splitlines()]
    assert [r["outcome"] for r in audit if r["event"] == "finish"] == ["cancelled"]


async def test_health_counts_the_sessions_open_now_and_their_switches(tmp_path: Path) -> None:
    gw, _ = gateway(tmp_path, "streamable-http")
    with anyio.fail_after(30):
        async with serving_http(gw) as base:
            async with Client(base + "/mcp", mode="legacy") as first, Client(base + "/mcp", mode="legacy") as second:
                assert not (await first.call_tool("privacy", {"enable": True})).is_error
                assert not (await second.call_tool("embed", {"input": "x"})).is_error
                _, during = await anyio.to_thread.run_sync(get, base + "/health")
                over_mcp = json.loads((await second.read_resource("gateway://health")).contents[0].text)  # type: ignore[union-attr]
            _, after = await anyio.to_thread.run_sync(get, base + "/health")
    sessions = json.loads(during)["sessions"]
    assert sessions["transport"] == "streamable-http" and sessions["open"] == 2 and sessions["principals"] == 1
    assert sessions["privacy_on"] == 1 and sessions["limits"]["per_principal"] == 64
    assert over_mcp["sessions"]["open"] == 2
    assert json.loads(after)["sessions"]["open"] == 0  # each client ended its session on the way out


async def test_health_over_stdio_shows_the_one_local_session(tmp_path: Path) -> None:
    server, _ = fake_server(tmp_path, {"a": FakeAdapter("a")})
    async with Client(server) as c:
        await c.call_tool("privacy", {"enable": True})
        health = json.loads((await c.read_resource("gateway://health")).contents[0].text)  # type: ignore[union-attr]
    assert health["sessions"] == {"transport": "stdio", "open": 1, "privacy_on": 1, "log_level": "warning"}
