"""Shedding (benchmark 15): what a "busy" answer costs, and goodput as clients outnumber max_in_flight.

The gateway serves a stub whose embeds take BENCH_STUB_DELAY_MS (an upstream's
latency), over Streamable HTTP with the shipped max_in_flight (64). Clients
are plain keep-alive HTTP connections sending the 2026-07-28 per-request
envelope (what the SDK client sends), so the client side stays cheap: each
loops one call at a time for a fixed time; at 50 clients every call is
served, at 100 and 200 the excess is shed. Goodput should hold, and a busy
answer should cost a fraction of a served call.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx2

from benchmarks.core import Plan, Row, Target, median, p50_ms
from benchmarks.procs import http_module, scratch_home

UPSTREAM_MS = 10
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "embed",
}
_ids = itertools.count(1)


def _body(text: str) -> bytes:
    params = {"name": "embed", "arguments": {"input": text}, "_meta": ENVELOPE}
    return json.dumps({"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call", "params": params}).encode()


async def call(client: httpx2.AsyncClient, url: str, text: str = "the quick brown fox") -> str:
    """One embed: "ok", "busy" or "error"."""
    reply = await client.post(url, content=_body(text), headers=HEADERS)
    result = reply.json().get("result") or {}
    if not result.get("isError"):
        return "ok" if reply.status_code == 200 else "error"
    return "busy" if "gateway busy" in result["content"][0]["text"] else "error"


async def load(url: str, clients: int, seconds: float) -> dict[str, float]:
    """`clients` connections, each sending one call after another for `seconds`: answers per second by kind."""
    counts = {"ok": 0, "busy": 0, "error": 0}
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(limits=limits, timeout=60) as client:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                counts[await call(client, url)] += 1

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(worker)
        took = time.perf_counter() - started
    return {kind: n / took for kind, n in counts.items()}


async def latencies(url: str, n: int, text: str = "the quick brown fox") -> tuple[float, dict[str, int]]:
    """p50 in ms of `n` sequential calls, and what they were answered."""
    kinds: dict[str, int] = {}
    samples = []
    async with httpx2.AsyncClient(timeout=60) as client:
        for _ in range(n):
            started = time.perf_counter()
            kind = await call(client, url, text)
            samples.append(time.perf_counter() - started)
            kinds[kind] = kinds.get(kind, 0) + 1
    return p50_ms(samples), kinds


@contextmanager
def stub_gateway(home: Path, max_in_flight: int, delay_ms: int) -> Iterator[str]:
    from benchmarks.stub import stub_manifests

    manifests = stub_manifests(home / f"manifests-{max_in_flight}", "group")
    perf = json.loads((manifests / "performance-config.json").read_text())
    perf["concurrency"]["max_in_flight"] = max_in_flight
    (manifests / "performance-config.json").write_text(json.dumps(perf))
    env = {"BENCH_STUB_DELAY_MS": str(delay_ms)}
    with http_module("benchmarks.stub", home, "--manifests", str(manifests), env=env) as base:
        yield base + "/mcp"


async def busy_vs_served(home: Path, n: int) -> tuple[float, float]:
    """p50 of a busy answer (the one slot held by a call that never ends) vs a served call, same process."""
    with stub_gateway(home, 1, 0) as url:
        served, _ = await latencies(url, n)
        async with httpx2.AsyncClient(timeout=60) as holder, anyio.create_task_group() as tg:
            tg.start_soon(call, holder, url, "hold the only slot")
            await anyio.sleep(0.5)  # the holder is in flight
            busy, kinds = await latencies(url, n)
            tg.cancel_scope.cancel()
    if kinds.get("busy") != n:
        raise RuntimeError(f"expected only busy answers, got {kinds}")
    return busy, served


async def bench_shedding(plan: Plan) -> list[Row]:
    seconds = 1.0 if plan.quick else 3.0
    with scratch_home() as home:
        busy_ms, served_ms = await busy_vs_served(home, plan.n(300, 30))
        by_clients: dict[int, list[dict[str, float]]] = {50: [], 100: [], 200: []}
        with stub_gateway(home, 64, UPSTREAM_MS) as url:
            await load(url, 50, 0.5)  # warm-up
            for _ in range(max(1, plan.rounds // 2)):
                for clients in by_clients:
                    by_clients[clients].append(await load(url, clients, seconds))
    rates = {c: {k: median(r[k] for r in runs) for k in ("ok", "busy", "error")} for c, runs in by_clients.items()}
    rows = [
        Row(
            "15",
            "busy answer p50 vs served call p50 (Streamable HTTP, stub)",
            "ms",
            busy_ms,
            served_ms,
            Target("<=", 0.5),
        ),
    ]
    for clients in (100, 200):
        r = rates[clients]
        note = f"busy answers {r['busy']:,.0f}/s, errors {r['error']:,.0f}/s"
        note += f"; at 50 clients busy {rates[50]['busy']:,.0f}/s"
        rows.append(
            Row(
                f"15-{clients}",
                f"goodput at {clients} vs 50 HTTP clients (max_in_flight 64, {UPSTREAM_MS} ms upstream)",
                "calls/s",
                r["ok"],
                rates[50]["ok"],
                Target(">=", 0.8),
                note=note,
                extra={"busy_per_s": round(r["busy"], 1), "errors_per_s": round(r["error"], 1)},
            )
        )
    return rows
