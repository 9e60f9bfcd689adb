"""Per-call overhead of the gateway against a bare MCPServer no-op (benchmarks 1, 2, 7, 11).

The gateway serves a stub adapter with canned answers, so what is measured is
the gateway's own path: argument validation, routing, policy, audit, metrics
and result shaping. The baseline is the SDK's floor on the same transport.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import Client

from benchmarks.bare import bare_server
from benchmarks.core import Plan, Row, Sample, Target, compare, interleave, latency_sample
from benchmarks.procs import bare_params, http_module, scratch_home, stub_params
from benchmarks.stub import ROUTES, StubAdapter, performance

EMBED_ARGS = {"input": "the quick brown fox"}
NOOP_ARGS = {"input": "the quick brown fox"}


def gateway_call(client: Client) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await client.call_tool("embed", EMBED_ARGS)

    return call


def bare_call(client: Client) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await client.call_tool("noop", NOOP_ARGS)

    return call


async def check(call: Callable[[], Awaitable[Any]], what: str) -> None:
    """A benchmark of an error path would be worthless: the first answer must be a success."""
    with anyio.fail_after(30):
        result = await call()
    if getattr(result, "is_error", False):
        text = result.content[0].text if result.content else ""
        raise RuntimeError(f"{what} answered with an error: {text}")


def throughput_sample(call: Callable[[], Awaitable[Any]], total: int, in_flight: int) -> Sample:
    """A round's sample: calls per second with `in_flight` calls outstanding at all times."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    async def sample() -> float:
        started = time.perf_counter()
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(in_flight):
                    tg.start_soon(worker, total // in_flight + (1 if i < total % in_flight else 0))
        return total / (time.perf_counter() - started)

    return sample


async def _latency_pair(gw: Client, bare: Client, plan: Plan) -> tuple[float, float]:
    n = plan.n(200, 20)
    g, b = gateway_call(gw), bare_call(bare)
    await check(g, "gateway")
    await check(b, "bare server")
    rounds = await interleave({"gateway": latency_sample(g, n), "bare": latency_sample(b, n)}, plan.rounds)
    return compare(rounds, "gateway", "bare")


async def bench_stdio(plan: Plan) -> list[Row]:
    """1 and 7: over stdio, p50 latency one at a time and throughput with 16 in flight."""
    with scratch_home() as home:
        async with Client(stub_params(home)) as gw, Client(bare_params(home)) as bare:
            p50_gw, p50_bare = await _latency_pair(gw, bare, plan)
            total = plan.n(800, 64)
            rounds = await interleave(
                {
                    "gateway": throughput_sample(gateway_call(gw), total, 16),
                    "bare": throughput_sample(bare_call(bare), total, 16),
                },
                plan.rounds,
            )
            tput_gw, tput_bare = compare(rounds, "gateway", "bare")
        async with Client(stub_params(home, "--audit-fsync", "never")) as gw, Client(bare_params(home)) as bare:
            p50_nosync, p50_bare2 = await _latency_pair(gw, bare, plan)
    return [
        Row(
            "1",
            "stdio call p50: gateway (stub adapter) vs bare no-op",
            "ms",
            p50_gw,
            p50_bare,
            Target("<=", 1.15),
            note="shipped audit policy: fsync=group",
        ),
        Row(
            "1-nosync",
            "same, audit fsync=never (what durability costs)",
            "ms",
            p50_nosync,
            p50_bare2,
            Target("<=", 1.15),
        ),
        Row("7", "stdio calls/s, 16 in flight: gateway vs bare SDK", "calls/s", tput_gw, tput_bare, Target(">=", 0.85)),
    ]


async def bench_in_process(plan: Plan) -> list[Row]:
    """2: the in-memory `Client(server)` transport, no process or pipe in the way."""
    from tests.support.gateway import fake_server

    with scratch_home() as home:
        server, _ = fake_server(home, {"stub": StubAdapter()}, routes=ROUTES, performance=performance(None))
        async with Client(server) as gw, Client(bare_server()) as bare:
            p50_gw, p50_bare = await _latency_pair(gw, bare, plan)
        server, _ = fake_server(
            home / "nosync", {"stub": StubAdapter()}, routes=ROUTES, performance=performance("never")
        )
        async with Client(server) as gw, Client(bare_server()) as bare:
            p50_nosync, p50_bare2 = await _latency_pair(gw, bare, plan)
    return [
        Row("2-nosync", "same, audit fsync=never", "ms", p50_nosync, p50_bare2, Target("<=", 1.25)),
        Row("2", "in-process Client(server) p50: gateway vs bare", "ms", p50_gw, p50_bare, Target("<=", 1.25)),
    ]


async def bench_http(plan: Plan) -> list[Row]:
    """11: Streamable HTTP with JSON responses, one process each, same client code.

    11-front: the same gateway with and without its HTTP front door (Host/Origin, body bounds,
    session guard, dropped-client cancellation): what those layers cost per call.
    """
    with (
        scratch_home() as home,
        http_module("benchmarks.stub", home) as gw_url,
        http_module("benchmarks.bare", home) as bare_url,
        http_module("benchmarks.stub", home, "--no-front-door") as plain_url,
    ):
        async with Client(gw_url + "/mcp") as gw, Client(bare_url + "/mcp") as bare:
            p50_gw, p50_bare = await _latency_pair(gw, bare, plan)
        async with Client(gw_url + "/mcp") as gw, Client(plain_url + "/mcp") as plain:
            n = plan.n(200, 20)
            front, without = gateway_call(gw), gateway_call(plain)
            await check(front, "gateway")
            await check(without, "gateway without front door")
            rounds = await interleave(
                {"front": latency_sample(front, n), "plain": latency_sample(without, n)}, plan.rounds
            )
            p50_front, p50_plain = compare(rounds, "front", "plain")
    return [
        Row("11", "Streamable HTTP (JSON) call p50: gateway vs bare", "ms", p50_gw, p50_bare, Target("<=", 1.15)),
        Row(
            "11-front",
            "same, gateway with its HTTP front door vs without",
            "ms",
            p50_front,
            p50_plain,
            Target("<=", 1.05),
        ),
    ]
