"""Every call is counted and leaves a trail: served, rejected, limited, denied, unroutable and busy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server

pytestmark = pytest.mark.anyio
PLANTED = "planted words nobody may log"
ROUTES = {"routes": {"embed": ["a/m"]}}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def calls_counted(gateway: Any, tool: str, outcome: str) -> float:
    needle = f'model_gateway_tool_calls_total{{outcome="{outcome}",tool="{tool}"}} '
    for line in gateway.get().metrics.render().decode().splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return 0.0


async def test_every_refused_call_is_counted_with_its_outcome_and_leaves_one_compact_record(tmp_path: Path) -> None:
    policy = {"rules": [{"id": "no-rerank", "effect": "deny", "match": {"tool": ["rerank"]}}]}
    perf = {"rate_limits": {"rules": [{"id": "two-chats", "tool": "chat", "rate_per_s": 0.001, "burst": 1}]}}
    adapter = FakeAdapter("a")
    server, gateway = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, policy=policy, performance=perf)
    chat = {"messages": [{"role": "user", "content": PLANTED}]}
    async with Client(server) as c:
        rejected = await c.call_tool("embed", {"input": 5, "model": PLANTED})
        unroutable = await c.call_tool("embed", {"input": [PLANTED], "model": "nope/none"})
        denied = await c.call_tool("rerank", {"query": PLANTED, "documents": [PLANTED]})
        served = await c.call_tool("chat", chat)
        limited = await c.call_tool("chat", chat)
        path = gateway.get().audit.path
        trail = records(path)
        counted = {
            (tool, outcome): calls_counted(gateway, tool, outcome)
            for tool, outcome in [
                ("embed", "rejected"),
                ("embed", "unroutable"),
                ("rerank", "denied"),
                ("chat", "ok"),
                ("chat", "limited"),
            ]
        }
    assert [r.is_error for r in (rejected, unroutable, denied, served, limited)] == [True, True, True, False, True]
    assert set(counted.values()) == {1.0}, counted
    refusals = [(r["tool"], r["outcome"], r["rule"]) for r in trail if r["event"] == "deny"]
    assert refusals == [
        ("embed", "rejected", "invalid_arguments"),
        ("embed", "unroutable", "no_route"),
        ("rerank", "denied", "rule:no-rerank"),
        ("chat", "limited", "rate_limited"),
    ]
    assert next(r for r in trail if r["outcome"] == "rejected")["fields"] == ["input"]
    assert [r["event"] for r in trail if r["tool"] == "chat"] == ["start", "finish", "deny"]
    assert PLANTED not in path.read_text()
    assert adapter.calls == [("chat", 1)]


async def test_over_max_in_flight_a_call_is_answered_busy_without_touching_anything_and_summarised(
    tmp_path: Path,
) -> None:
    slow = FakeAdapter("a")
    slow.delay_s = 30
    server, gateway = fake_server(
        tmp_path,
        {"a": slow},
        routes=ROUTES,
        performance={"concurrency": {"max_in_flight": 2}, "batching": {"coalesce": False}},
    )
    busy: list[str] = []
    async with Client(server) as c:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(2):
                    tg.start_soon(c.call_tool, "embed", {"input": f"held {i}"})
                while len(slow.calls) < 2:
                    await anyio.wait_all_tasks_blocked()
                for args in ({"input": "x"}, {"input": 5}, {"input": "y"}):  # even bad arguments get the cheap answer
                    result = await c.call_tool("embed", args)
                    busy.append(result.content[0].text if result.is_error else "served")
                tg.cancel_scope.cancel()
        held, path = gateway.get().in_flight, gateway.get().audit.path
        counted = calls_counted(gateway, "embed", "busy"), calls_counted(gateway, "embed", "rejected")
    trail = records(path)  # the gateway has stopped: the last summary is written
    assert busy == ["gateway busy: 2 calls in flight (limit 2); retry shortly"] * 3
    assert len(slow.calls) == 2 and held == 0 and counted == (3.0, 0.0)
    shed = [r for r in trail if r["event"] == "shed"]
    assert (
        1 <= len(shed) <= 2 and sum(r["count"] for r in shed) == 3 and shed[0]["tools"] == {"embed": shed[0]["count"]}
    )
    assert not any(r["event"] == "deny" for r in trail)


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


async def test_a_call_cancelled_while_its_finish_record_waits_for_the_trail_is_still_audited(tmp_path: Path) -> None:
    from server.audit_chain import lock_path
    from server.statefile import open_lock, try_lock, unlock

    slow = FakeAdapter("a")
    slow.delay_s = 30
    server, ref = fake_server(tmp_path, {"a": slow})
    async with Client(server) as c:
        path = ref.get().audit.path
        other = open_lock(lock_path(path))
        call_scope = anyio.CancelScope()

        async def call() -> None:
            with call_scope:
                await c.call_tool("chat", {"messages": [{"role": "user", "content": "hi"}]})

        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    await slow.entered.wait()
                    assert try_lock(other)  # another process appends: the finish record has to wait
                    call_scope.cancel()
                    await slow.cancel_seen.wait()  # the call is cancelled; its finish waits on the lock
                    assert not any('"finish"' in line for line in path.read_text().splitlines())
                    unlock(other)
        finally:
            os.close(other)
        records = [json.loads(x) for x in path.read_text().splitlines()]
    finish = [r for r in records if r["event"] == "finish"]
    assert len(finish) == 1 and finish[0]["outcome"] == "cancelled"
