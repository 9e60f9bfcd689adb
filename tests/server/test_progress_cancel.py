from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server

pytestmark = pytest.mark.anyio


async def test_chat_sends_progress_when_the_client_asks(tmp_path: Path) -> None:
    server, _ = fake_server(tmp_path, {"a": FakeAdapter("a")})
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    # JSON-RPC framing, as on every real transport: the progress token travels in the request's _meta
    async with Client(server, mode="legacy") as c:
        r = await c.call_tool(
            "chat", {"messages": [{"role": "user", "content": "a b c"}]}, progress_callback=on_progress
        )
    assert not r.is_error
    assert [d for d, _, _ in seen] == [1, 2, 3]


async def test_a_cancelled_call_stops_the_upstream_work_and_is_audited_as_cancelled(tmp_path: Path) -> None:
    slow = FakeAdapter("a")
    slow.delay_s = 30
    server, ref = fake_server(tmp_path, {"a": slow})
    async with Client(server) as c:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(c.call_tool, "chat", {"messages": [{"role": "user", "content": "hi"}]})
                await slow.entered.wait()
                tg.cancel_scope.cancel()
            await slow.cancel_seen.wait()  # the server side sees the cancellation
        health = json.loads((await c.read_resource("gateway://health")).contents[0].text)
        records = [json.loads(x) for x in ref.get().audit.path.read_text().splitlines()]
    assert slow.cancelled == 1
    finish = [r for r in records if r["event"] == "finish"]
    assert finish[-1]["outcome"] == "cancelled" and finish[-1]["tool"] == "chat"
    assert health["in_flight"] == 0
