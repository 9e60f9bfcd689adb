"""At max_in_flight a model tool call over Streamable HTTP is answered busy at the edge, as the tool would answer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from pydantic import SecretStr

from adapters.base import EmbedRequest, EmbedResult
from server.app import Gateway
from server.principal import token_digest
from server.toolkit import GatewayTool
from tests.support import mcp_http
from tests.support.fakes import FakeAdapter
from tests.support.gateway import serving_http, settings_for
from tests.support.processes import free_port

pytestmark = pytest.mark.anyio
BUSY = "gateway busy: 1 calls in flight (limit 1); retry shortly"
TOKENS = {"token-of-alice-0123456789": "alice", "token-of-bob-0123456789abc": "bob"}


class HoldingAdapter(FakeAdapter):
    """Embeds at once, except one of "hold", which waits until released."""

    def __init__(self) -> None:
        super().__init__("a")
        self.release = anyio.Event()

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        if req.texts[0] == "hold":
            self.entered.set()
            await self.release.wait()
        return await super().embed(req)


def gateway(tmp_path: Path, transport: str = "streamable-http", **settings: Any) -> tuple[Gateway, HoldingAdapter]:
    slow = HoldingAdapter()
    perf = {"concurrency": {"max_in_flight": 1}, "batching": {"coalesce": False}, "response_cache": {"enabled": False}}
    base = settings_for(
        tmp_path, routes={"routes": {"embed": ["a/m"]}}, performance=perf, load={"transport": transport}
    )
    return Gateway(dataclasses.replace(base, port=free_port(), **settings), {"a": slow}), slow


def counted(gw: Gateway, outcome: str) -> float:
    needle = f'model_gateway_tool_calls_total{{outcome="{outcome}",tool="embed"}} '
    lines = gw.get().metrics.render().decode().splitlines()
    return next((float(line.split()[-1]) for line in lines if line.startswith(needle)), 0.0)


@asynccontextmanager
async def one_call_held(client: Client, slow: HoldingAdapter) -> AsyncIterator[None]:
    """The gateway's only slot taken by a call that is served when the block ends."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.call_tool, "embed", {"input": "hold"})
        await slow.entered.wait()
        yield
        slow.release.set()


@pytest.fixture
def in_tool(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The busy answers given inside the tool (the fallback), as they happen."""
    seen: list[str] = []
    original = GatewayTool._shed

    async def shed(self: GatewayTool, state: Any) -> None:
        seen.append(self.name)
        await original(self, state)

    monkeypatch.setattr(GatewayTool, "_shed", shed)
    return seen


@pytest.mark.parametrize(
    ("mode", "settings"),
    [
        ("auto", {}),
        ("auto", {"json_response": False}),
        ("legacy", {"json_response": True}),
        ("legacy", {"json_response": False}),
        ("legacy", {"stateless": True}),
    ],
    ids=["2026", "2026-sse", "json", "sse", "stateless"],
)
async def test_at_the_limit_a_streamable_http_call_is_answered_busy_before_the_sdk_and_the_next_one_is_served(
    tmp_path: Path, in_tool: list[str], mode: str, settings: dict[str, bool]
) -> None:
    gw, slow = gateway(tmp_path, **settings)
    with anyio.fail_after(30):
        async with serving_http(gw) as base, Client(base + "/mcp", mode=mode) as client:  # type: ignore[arg-type]
            async with one_call_held(client, slow):
                answers = [await client.call_tool("embed", {"input": text}) for text in ("x", "y")]
                bad = await client.call_tool("embed", {"input": 5})  # arguments are not even read
            after = await client.call_tool("embed", {"input": "after the load"})
            busy = counted(gw, "busy")
        trail = [json.loads(line) for line in gw.settings.audit_path.read_text().splitlines()]
    assert [(r.is_error, r.content[0].text) for r in [*answers, bad]] == [(True, BUSY)] * 3  # type: ignore[union-attr]
    assert not after.is_error and after.structured_content is not None
    assert busy == 3 and in_tool == [] and slow.calls == [("embed", 1)] * 2
    shed = [r for r in trail if r["event"] == "shed"]
    assert sum(r["count"] for r in shed) == 3 and all(r["tools"] == {"embed": r["count"]} for r in shed)


async def test_over_legacy_sse_the_busy_answer_comes_from_the_tool_on_the_sessions_stream(
    tmp_path: Path, in_tool: list[str]
) -> None:
    gw, slow = gateway(tmp_path, "sse")
    with anyio.fail_after(30):
        async with serving_http(gw) as base, Client(sse_client(base + "/sse")) as client:
            async with one_call_held(client, slow):
                answer = await client.call_tool("embed", {"input": "x"})
            busy = counted(gw, "busy")
    assert answer.is_error and answer.content[0].text == BUSY  # type: ignore[union-attr]
    assert busy == 1 and in_tool == ["embed"]


async def test_a_busy_answer_keeps_the_id_and_another_principals_session_still_gets_404(tmp_path: Path) -> None:
    subjects = {token_digest(token): who for token, who in TOKENS.items()}
    alice, bob = TOKENS
    gw, slow = gateway(tmp_path, auth_token=SecretStr(alice), auth_subjects=subjects)
    url = ""
    with anyio.fail_after(30):
        async with serving_http(gw) as base, httpx2.AsyncClient(timeout=20) as http:
            url = base + "/mcp"
            sid = await mcp_http.open_session(http, url, alice)
            async with anyio.create_task_group() as tg:
                tg.start_soon(mcp_http.post, http, url, mcp_http.tool_call("embed", {"input": "hold"}, 1), alice, sid)
                await slow.entered.wait()
                call = mcp_http.tool_call("embed", {"input": "x"}, 0)
                call["id"] = "call-7"
                own = await mcp_http.post(http, url, call, alice, sid)
                stolen = await mcp_http.post(http, url, call, bob, sid)
                models = await mcp_http.post(http, url, mcp_http.tool_call("models", {}, 9), alice, sid)
                slow.release.set()
                tg.cancel_scope.cancel()
    assert own.status_code == 200 and own.headers["mcp-session-id"] == sid
    assert own.json() == {
        "jsonrpc": "2.0",
        "id": "call-7",
        "result": {"content": [{"type": "text", "text": BUSY}], "isError": True},
    }
    assert stolen.status_code == 404 and "busy" not in stolen.text
    assert models.status_code == 200 and not models.json()["result"].get("isError")  # only model tools shed


async def test_at_the_limit_a_call_the_transport_would_refuse_still_gets_the_transports_own_answer(
    tmp_path: Path,
) -> None:
    from benchmarks.b_shedding import HEADERS, _body

    gw, slow = gateway(tmp_path)
    with anyio.fail_after(30):
        async with serving_http(gw) as base, httpx2.AsyncClient(timeout=20) as http:
            url = base + "/mcp"
            sid = await mcp_http.open_session(http, url)
            async with anyio.create_task_group() as tg:
                tg.start_soon(mcp_http.post, http, url, mcp_http.tool_call("embed", {"input": "hold"}, 1), None, sid)
                await slow.entered.wait()
                no_session = await mcp_http.post(http, url, mcp_http.tool_call("embed", {"input": "x"}, 3))
                misrouted = await http.post(url, content=_body("x"), headers={**HEADERS, "mcp-name": "rerank"})
                html_only = await http.post(
                    url,
                    json=mcp_http.tool_call("embed", {"input": "x"}, 4),
                    headers=mcp_http.headers(sid=sid, accept="text/html"),
                )
                slow.release.set()
                tg.cancel_scope.cancel()
            busy = counted(gw, "busy")
    assert no_session.status_code == 400 and "busy" not in no_session.text
    assert misrouted.status_code == 400 and "busy" not in misrouted.text
    assert html_only.status_code == 406
    assert busy == 0
