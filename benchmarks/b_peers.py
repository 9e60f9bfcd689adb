"""The same embed path through the peers a user would pick instead (benchmark 14).

Against one fake Ollama process: the gateway vs `ollama-mcp` (npm, an MCP server
for Ollama; both over MCP stdio) and vs the LiteLLM proxy (`POST /v1/embeddings`;
the gateway over Streamable HTTP there, so both sides speak HTTP). Columns: cold
start, one-text p50, one call of 64 texts, 64 one-text calls with 16 in flight
(with the upstream requests each made), idle and loaded RSS. Peers install with
benchmarks/setup_peers.sh into .bench/; missing ones are skipped.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from benchmarks.core import Plan, Row, Sample, Target, compare, interleave, latency_sample
from benchmarks.procs import child_running, children, env_for, gateway_params, memory_mib, scratch_home
from benchmarks.upstream import OLLAMA_MODEL, fake_ollama, gateway_manifests, reset_upstream, upstream_embeds
from tests.support.proc import stop
from tests.support.processes import ROOT, free_port, gateway_argv, wait_http

BENCH = ROOT / ".bench"
OLLAMA_MCP = BENCH / "node" / "node_modules" / "ollama-mcp" / "dist" / "index.js"
LITELLM = BENCH / "litellm-venv" / "bin" / "litellm"
TEXT = "the quick brown fox jumps over the lazy dog"
MASTER_KEY = "sk-" + "0" * 48  # a throwaway key: the proxy refuses to start without one
Embed = Callable[[list[str]], Awaitable[Any]]


@dataclass
class Running:
    embed: Embed
    pid: int


def rss_tree(pid: int) -> float:
    """VmRSS of a process and its children, MiB."""
    return memory_mib(pid)["VmRSS"] + sum(rss_tree(c) for c in children(pid))


def _check(result: Any, who: str) -> Any:
    if getattr(result, "is_error", False):
        raise RuntimeError(f"{who} answered with an error: {str(result.content)[:200]}")
    return result


@contextlib.asynccontextmanager
async def mcp_system(
    params: StdioServerParameters, needle: str, tool: str, batch_arg: Callable[[list[str]], Any]
) -> AsyncIterator[Running]:
    async with Client(params) as client:
        await client.list_tools()

        async def embed(texts: list[str]) -> Any:
            return _check(await client.call_tool(tool, {"model": OLLAMA_MODEL, "input": batch_arg(texts)}), needle)

        yield Running(embed, child_running(needle))


def ollama_mcp_params(home: Path, url: str) -> StdioServerParameters:
    return StdioServerParameters(command="node", args=[str(OLLAMA_MCP)], env=env_for(home, {"OLLAMA_HOST": url}))


def gateway_stdio(home: Path, manifests: Path) -> Callable[[], Any]:
    return lambda: mcp_system(gateway_params(home, manifests), "server serve", "embed", lambda t: t)


def ollama_mcp(home: Path, url: str) -> Callable[[], Any]:
    return lambda: mcp_system(
        ollama_mcp_params(home, url), "ollama-mcp", "ollama_embed", lambda t: t[0] if len(t) == 1 else json.dumps(t)
    )


@contextlib.contextmanager
def _http_process(argv: list[str], env: dict[str, str], ready: str) -> Any:
    proc = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(ready, deadline_s=120, proc=proc)
        yield proc
    finally:
        stop(proc)


def litellm_argv(home: Path, url: str, port: int) -> tuple[list[str], dict[str, str]]:
    config = home / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: all-minilm\n    litellm_params:\n"
        f"      model: ollama/all-minilm\n      api_base: {url}\n"
    )
    env = {**env_for(home), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    env["LITELLM_MASTER_KEY"] = MASTER_KEY
    return [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)], env


def litellm(home: Path, url: str) -> Callable[[], Any]:
    @contextlib.asynccontextmanager
    async def system() -> AsyncIterator[Running]:
        port = free_port()
        argv, env = litellm_argv(home, url, port)
        base = f"http://127.0.0.1:{port}"
        with _http_process(argv, env, base + "/health/liveliness") as proc:
            auth = {"Authorization": f"Bearer {MASTER_KEY}"}
            async with httpx2.AsyncClient(base_url=base, headers=auth, trust_env=False, timeout=60) as http:

                async def embed(texts: list[str]) -> Any:
                    r = await http.post("/v1/embeddings", json={"model": "all-minilm", "input": texts})
                    r.raise_for_status()
                    return r.json()

                yield Running(embed, proc.pid)

    return system


def gateway_http(home: Path, manifests: Path) -> Callable[[], Any]:
    @contextlib.asynccontextmanager
    async def system() -> AsyncIterator[Running]:
        port = free_port()
        argv = gateway_argv("--transport", "streamable-http", "--port", str(port), "--manifests", str(manifests))
        base = f"http://127.0.0.1:{port}"
        with _http_process(argv, env_for(home), base + "/health") as proc:
            async with Client(base + "/mcp") as client:

                async def embed(texts: list[str]) -> Any:
                    return _check(await client.call_tool("embed", {"input": texts}), "gateway")

                yield Running(embed, proc.pid)

    return system


def cold_sample(system: Callable[[], Any], first_call: bool = False) -> Sample:
    """spawn → ready (MCP: tools/listed; HTTP: health answered), or → a first one-text embed answered."""

    async def sample() -> float:
        started = time.perf_counter()
        with anyio.fail_after(180):
            async with system() as s:
                if first_call:
                    await s.embed([TEXT])
                return (time.perf_counter() - started) * 1000

    return sample


async def burst(embed: Embed, calls: int, in_flight: int) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await embed([TEXT])

    started = time.perf_counter()
    with anyio.fail_after(180):
        async with anyio.create_task_group() as tg:
            for _ in range(in_flight):
                tg.start_soon(worker, calls // in_flight)
    return (time.perf_counter() - started) * 1000


def burst_sample(s: Running) -> Sample:
    async def sample() -> float:
        return await burst(s.embed, 64, 16)

    return sample


async def _upstream_of(url: str, s: Running) -> int:
    await anyio.to_thread.run_sync(reset_upstream, url)
    await burst(s.embed, 64, 16)
    return int(await anyio.to_thread.run_sync(upstream_embeds, url))


async def compare_pair(gw: Callable[[], Any], peer: Callable[[], Any], url: str, plan: Plan, label: str) -> list[Row]:
    """Every column interleaved gateway / peer; ratio = gateway ÷ peer, so below 1 is ahead."""
    cold = await interleave({"gw": cold_sample(gw), "peer": cold_sample(peer)}, min(plan.rounds, 3))
    first = await interleave(
        {"gw": cold_sample(gw, first_call=True), "peer": cold_sample(peer, first_call=True)}, min(plan.rounds, 3)
    )
    batch = [f"{i}: {TEXT}" for i in range(64)]
    n = plan.n(50, 5)
    async with gw() as g, peer() as p:
        await g.embed([TEXT])
        await p.embed([TEXT])
        idle = (rss_tree(g.pid), rss_tree(p.pid))
        one = await interleave(
            {"gw": latency_sample(lambda: g.embed([TEXT]), n), "peer": latency_sample(lambda: p.embed([TEXT]), n)},
            plan.rounds,
        )
        many = await interleave(
            {
                "gw": latency_sample(lambda: g.embed(batch), max(3, n // 5)),
                "peer": latency_sample(lambda: p.embed(batch), max(3, n // 5)),
            },
            plan.rounds,
        )
        bursts = await interleave({"gw": burst_sample(g), "peer": burst_sample(p)}, plan.rounds)
        requests = (await _upstream_of(url, g), await _upstream_of(url, p))
        loaded = (rss_tree(g.pid), rss_tree(p.pid))
    ahead = Target("<=", 1.0)
    rows = [
        Row("14", f"{label}: cold start (spawn → ready)", "ms", *compare(cold, "gw", "peer"), ahead),
        Row("14", f"{label}: spawn → first one-text embed answered", "ms", *compare(first, "gw", "peer"), ahead),
        Row("14", f"{label}: one-text embed p50", "ms", *compare(one, "gw", "peer"), ahead),
        Row("14", f"{label}: one call of 64 texts p50", "ms", *compare(many, "gw", "peer"), ahead),
        Row(
            "14",
            f"{label}: 64 one-text calls, 16 in flight (wall)",
            "ms",
            *compare(bursts, "gw", "peer"),
            ahead,
            note=f"upstream requests {requests[0]} vs {requests[1]}",
        ),
        Row("14", f"{label}: idle RSS", "MiB", idle[0], idle[1], ahead),
        Row("14", f"{label}: loaded RSS", "MiB", loaded[0], loaded[1], ahead),
    ]
    return rows


async def bench_peers(plan: Plan) -> list[Row]:
    rows: list[Row] = []
    with fake_ollama() as url, scratch_home() as home:
        manifests = gateway_manifests(home / "manifests", url)
        if OLLAMA_MCP.is_file():
            label = "gateway vs ollama-mcp (MCP stdio)"
            rows += await _guarded(
                compare_pair(gateway_stdio(home, manifests), ollama_mcp(home, url), url, plan, label), label
            )
        else:
            rows.append(Row("14", "gateway vs ollama-mcp", skipped="not installed: run benchmarks/setup_peers.sh"))
        if LITELLM.is_file():
            label = "gateway (Streamable HTTP) vs LiteLLM proxy"
            rows += await _guarded(
                compare_pair(gateway_http(home, manifests), litellm(home, url), url, plan, label), label
            )
        else:
            rows.append(Row("14", "gateway vs LiteLLM proxy", skipped="not installed: run benchmarks/setup_peers.sh"))
    return rows


async def _guarded(rows: Awaitable[list[Row]], label: str) -> list[Row]:
    """One peer failing to start must not hide the other's columns."""
    try:
        return await rows
    except Exception as exc:
        return [Row("14", label, skipped=f"failed: {type(exc).__name__}: {exc}"[:300], error=True)]
