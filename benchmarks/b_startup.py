"""Start-up time and memory (benchmarks 8 and 10)."""

from __future__ import annotations

import time

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from benchmarks.b_calls import bare_call, check, gateway_call, throughput_sample
from benchmarks.core import Plan, Row, Sample, Target, compare, interleave, median
from benchmarks.procs import bare_params, child_running, gateway_params, memory_mib, scratch_home, stub_params
from benchmarks.upstream import fake_ollama, gateway_manifests


def spawn_sample(params: StdioServerParameters, call: tuple[str, dict[str, object]] | None = None) -> Sample:
    """ms from spawning the server to the answer of its first tools/list, or of a first tool call after it."""

    async def sample() -> float:
        with anyio.fail_after(60):
            started = time.perf_counter()
            async with Client(params) as client:
                await client.list_tools()
                if call is not None:
                    result = await client.call_tool(*call)
                    if result.is_error:
                        raise RuntimeError(f"first call failed: {result.content}")
                took = (time.perf_counter() - started) * 1000
        return took

    return sample


async def bench_spawn(plan: Plan) -> list[Row]:
    """8: real `serve` (warm caches: the warm-up round writes them) vs a bare MCPServer.

    The fast start answers the handshake while the SDK imports, so 8-call also times a first
    tool call, and 8-nofast the handshake with the fast start off.
    """
    rounds = max(plan.rounds, 3)
    with fake_ollama() as url, scratch_home() as home:
        manifests = gateway_manifests(home / "manifests", url)
        gw, bare = gateway_params(home, manifests), bare_params(home)
        runs = await interleave({"gateway": spawn_sample(gw), "bare": spawn_sample(bare)}, rounds)
        shipped = await interleave(
            {"gateway": spawn_sample(gateway_params(home, None)), "bare": spawn_sample(bare)}, rounds
        )
        nofast = gateway_params(home, manifests)
        nofast.args.append("--no-fast-start")
        slow = await interleave({"gateway": spawn_sample(nofast), "bare": spawn_sample(bare)}, rounds)
        first_call = await interleave(
            {
                "gateway": spawn_sample(gw, ("embed", {"input": "x"})),
                "bare": spawn_sample(bare, ("noop", {"input": "x"})),
            },
            rounds,
        )
    return [
        Row(
            "8",
            "spawn → first tools/list: serve (Ollama manifests, warm caches) vs bare",
            "ms",
            *compare(runs, "gateway", "bare"),
            Target("<=", 1.10),
            note="answered from the previous run's handshake while the SDK imports",
        ),
        Row(
            "8-shipped",
            "spawn → first tools/list: serve (shipped manifests: MLX)",
            "ms",
            *compare(shipped, "gateway", "bare"),
            Target("<=", 1.10),
        ),
        Row(
            "8-nofast",
            "spawn → first tools/list with --no-fast-start",
            "ms",
            *compare(slow, "gateway", "bare"),
            Target("<=", 1.10),
        ),
        Row(
            "8-call",
            "spawn → tools/list → first tool call answered (embed vs bare no-op)",
            "ms",
            *compare(first_call, "gateway", "bare"),
            Target("report"),
        ),
    ]


async def _idle_memory(params: StdioServerParameters, needle: str, call: str) -> dict[str, float]:
    async with Client(params) as client:
        await client.list_tools()
        await client.call_tool(call, {"input": "x"})
        await anyio.sleep(0.5)
        return memory_mib(child_running(needle))


async def bench_memory(plan: Plan) -> list[Row]:
    """10: peak RSS idle (real `serve`, no model loaded) vs bare; RSS growth over 10,000 gateway calls."""
    with fake_ollama() as url, scratch_home() as home:
        manifests = gateway_manifests(home / "manifests", url)
        peaks: dict[str, list[float]] = {"gateway": [], "bare": []}
        for _ in range(max(1, plan.rounds // 2)):
            peaks["gateway"].append(
                (await _idle_memory(gateway_params(home, manifests), "server serve", "embed"))["VmHWM"]
            )
            peaks["bare"].append((await _idle_memory(bare_params(home), "benchmarks.bare", "noop"))["VmHWM"])
        growth = await _growth(home, plan.n(10_000, 1_000))
    return [
        Row(
            "10",
            "peak RSS idle (no model loaded): serve vs bare MCPServer",
            "MiB",
            median(peaks["gateway"]),
            median(peaks["bare"]),
            Target("<=", 1.25),
        ),
        Row(
            "10-growth",
            f"RSS growth after {growth[2]:,} gateway calls (stub adapter, 16 in flight)",
            "MiB",
            growth[1] - growth[0],
            None,
            Target("<=", 2.0, "MiB"),
            note=f"VmRSS {growth[0]:.1f} → {growth[1]:.1f} MiB",
        ),
    ]


async def _growth(home: anyio.Path | object, calls: int) -> tuple[float, float, int]:
    from pathlib import Path

    assert isinstance(home, Path)
    async with Client(stub_params(home)) as client:
        call = gateway_call(client)
        await check(call, "stub gateway")
        with anyio.fail_after(600):
            await throughput_sample(call, 1_000, 16)()  # caches, pools and lazy imports settle first
            pid = child_running("benchmarks.stub")
            before = memory_mib(pid)["VmRSS"]
            await throughput_sample(call, calls, 16)()
            after = memory_mib(pid)["VmRSS"]
    return before, after, calls


__all__ = ["bare_call", "bench_memory", "bench_spawn"]
