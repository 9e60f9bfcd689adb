"""Calls that reach a loopback upstream (benchmarks 3, 4, 5 and 6 over HTTP).

3 is in-process (adapter vs a raw keep-alive POST of the same body); 4 to 6
run end to end: an MCP client, a real `serve` process, the fake Ollama process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import orjson
from mcp import Client

import adapters._http as adapter_http
from adapters.base import AdapterContext
from adapters.manifest import ModelSpec, OllamaManifest, OpenAIManifest
from adapters.ollama import OllamaAdapter
from adapters.types import EmbedRequest
from benchmarks.b_calls import check
from benchmarks.core import Plan, Row, Sample, Target, compare, interleave, latency_sample, median
from benchmarks.procs import gateway_params, http_module, scratch_home
from benchmarks.upstream import (
    OLLAMA_MODEL,
    OPENAI_MODEL,
    fake_ollama,
    fake_openai,
    gateway_manifests,
    reset_upstream,
    upstream_embeds,
)
from tests.support.fake_ollama import Fault, remote_inject

TEXT = "the quick brown fox jumps over the lazy dog"


def texts(n: int) -> list[str]:
    return [f"sentence {i}: {TEXT}" for i in range(n)]


# --- 3: adapter vs raw POST ------------------------------------------------------


async def _adapter_vs_raw(
    adapter: Any, url: str, path: str, body: dict[str, Any], plan: Plan
) -> tuple[float, float, int]:
    raw = httpx2.AsyncClient(base_url=url, trust_env=False, timeout=httpx2.Timeout(30.0))
    req = EmbedRequest(model=body["model"], texts=(TEXT,))

    async def via_adapter() -> None:
        await adapter.embed(req)

    async def via_raw() -> None:
        response = await raw.post(path, json=body)
        response.raise_for_status()
        response.json()

    try:
        await via_adapter()  # the adapter builds its one client on first use
        built = adapter_http.CLIENTS_BUILT
        n = plan.n(200, 20)
        rounds = await interleave(
            {"adapter": latency_sample(via_adapter, n), "raw": latency_sample(via_raw, n)}, plan.rounds
        )
        per_request = adapter_http.CLIENTS_BUILT - built
    finally:
        await raw.aclose()
        await adapter.aclose()
    measured, baseline = compare(rounds, "adapter", "raw")
    return measured, baseline, per_request


def _row3(bench: str, what: str, measured: float, baseline: float, built: int) -> Row:
    row = Row(bench, what, "ms", measured, baseline, Target("<=", 1.15), note=f"clients built while measuring: {built}")
    row.extra["clients_built"] = built
    row.also_ok = built == 0
    return row


async def bench_adapter_http(plan: Plan) -> list[Row]:
    rows = []
    with fake_ollama() as url:
        manifest = OllamaManifest(kind="ollama", name="bench", endpoint=url)
        adapter = OllamaAdapter(manifest, AdapterContext())
        body = {"model": OLLAMA_MODEL, "input": [TEXT], "truncate": True, "keep_alive": "5m"}
        m, b, built = await _adapter_vs_raw(adapter, url, "/api/embed", body, plan)
        rows.append(_row3("3-ollama", "Ollama adapter embed vs raw keep-alive httpx2 POST, p50", m, b, built))
    try:
        from adapters.openai_compat import OpenAIAdapter
    except ImportError as exc:
        return [*rows, Row("3-openai", "OpenAI adapter vs raw POST", skipped=f"adapter not importable: {exc}")]
    with fake_openai() as url:
        spec = ModelSpec(name=OPENAI_MODEL, capabilities=["embed"])
        openai = OpenAIManifest(kind="openai", name="bench", endpoint=url, privacy="local", models=[spec])
        oa_adapter = OpenAIAdapter(openai, AdapterContext())
        body = {"model": OPENAI_MODEL, "input": [TEXT], "encoding_format": "float"}
        m, b, built = await _adapter_vs_raw(oa_adapter, url, "/v1/embeddings", body, plan)
        rows.append(_row3("3-openai", "OpenAI adapter embed vs raw keep-alive httpx2 POST, p50", m, b, built))
    rows.append(await _large_answer(plan))
    return rows


# --- 3-large: the event loop while a large answer is taken ---------------------------


async def _longest_block_ms(run: Callable[[], Awaitable[Any]]) -> float:
    """The longest the event loop went without running a 1 ms ticker while `run` ran."""
    longest = 0.0
    done = anyio.Event()

    async def tick() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.01)
        with anyio.fail_after(120):
            await run()
        done.set()
    return longest * 1000


async def _large_answer(plan: Plan) -> Row:
    """The adapter reads and decodes a ~16 MB embed answer (256 x 3072-d floats, one upstream chunk at the
    shipped batch_limit) vs a raw read and one orjson parse on the event loop."""
    count = plan.n(256, 64)
    vector = [math.sin(i) / 10 for i in range(3072)]  # full-precision floats, as embedding servers send them
    answer = orjson.dumps({"model": OLLAMA_MODEL, "embeddings": [vector] * count}).decode()
    fault = Fault("body", path="/api/embed", body=answer, times=1)
    with fake_ollama() as url:
        adapter = OllamaAdapter(OllamaManifest(kind="ollama", name="bench", endpoint=url), AdapterContext())
        raw = httpx2.AsyncClient(base_url=url, trust_env=False, timeout=httpx2.Timeout(60.0))
        request = EmbedRequest(model=OLLAMA_MODEL, texts=tuple(texts(count)))
        body = {"model": OLLAMA_MODEL, "input": list(request.texts)}

        async def via_adapter() -> float:
            await anyio.to_thread.run_sync(remote_inject, url, fault)
            return await _longest_block_ms(lambda: adapter.embed(request))

        async def via_raw() -> float:
            await anyio.to_thread.run_sync(remote_inject, url, fault)

            async def post() -> None:
                orjson.loads((await raw.post("/api/embed", json=body)).content)

            return await _longest_block_ms(post)

        try:
            rounds = await interleave({"adapter": via_adapter, "raw": via_raw}, plan.rounds)
        finally:
            await raw.aclose()
            await adapter.aclose()
    measured, baseline = median(rounds["adapter"]), median(rounds["raw"])
    size = f"{len(answer) / 2**20:.1f} MiB"
    row = Row(
        "3-large",
        f"longest event-loop block taking a {size} embed answer: adapter vs raw read + orjson",
        "ms",
        measured,
        baseline,
        Target("<=", 50, unit="ms"),
    )
    row.extra["clients_built"] = 0
    return row


# --- 4, 5: batch sizes end to end -------------------------------------------------


def embed_call(client: Client, inputs: str | list[str], **extra: Any) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await client.call_tool("embed", {"input": inputs, **extra})

    return call


def elapsed_ms(run: Callable[[], Awaitable[Any]]) -> Sample:
    async def sample() -> float:
        started = time.perf_counter()
        with anyio.fail_after(120):
            await run()
        return (time.perf_counter() - started) * 1000

    return sample


async def _count(url: str, run: Callable[[], Awaitable[Any]]) -> int:
    await anyio.to_thread.run_sync(reset_upstream, url)
    await run()
    return int(await anyio.to_thread.run_sync(upstream_embeds, url))


async def bench_batch_sizes(plan: Plan) -> list[Row]:
    """4: 64 texts in one call vs 64 calls; 5: p50 of a 64-vector result vs a 1-vector result."""
    batch = texts(64)
    with fake_ollama() as url, scratch_home() as home:
        manifests = gateway_manifests(home / "manifests", url)
        async with Client(gateway_params(home, manifests)) as client:
            one_of_64 = embed_call(client, batch)
            await check(one_of_64, "gateway embed")

            async def sixty_four_calls() -> None:
                for t in batch:
                    await embed_call(client, t)()

            rounds = await interleave(
                {"batched": elapsed_ms(one_of_64), "per-text": elapsed_ms(sixty_four_calls)}, plan.rounds
            )
            t_batched, t_each = compare(rounds, "batched", "per-text")
            requests = (await _count(url, one_of_64), await _count(url, sixty_four_calls))
            n = plan.n(100, 10)
            sizes = await interleave(
                {
                    "64": latency_sample(one_of_64, n),
                    "1": latency_sample(embed_call(client, batch[0]), n),
                    "64-b64": latency_sample(embed_call(client, batch, encoding="base64"), n),
                },
                plan.rounds,
            )
    row4 = Row(
        "4",
        "embed 64 texts: 1 call vs 64 calls, throughput (end to end, MCP stdio)",
        "texts/s",
        64_000 / t_batched,
        64_000 / t_each,
        Target(">=", 20),
        note=f"upstream requests {requests[0]} vs {requests[1]}",
    )
    row5 = Row(
        "5",
        "embed result p50: 64 vectors vs 1 vector (384-d, float)",
        "ms",
        median(sizes["64"]),
        median(sizes["1"]),
        Target("<=", 3),
    )
    row5b = Row(
        "5-b64",
        "embed result p50: 64 vectors (base64) vs 1 vector",
        "ms",
        median(sizes["64-b64"]),
        median(sizes["1"]),
        Target("<=", 3),
    )
    return [row4, row5, row5b]


UPSTREAM_REQUEST_MS = 5.0


# --- 6: coalescing ---------------------------------------------------------------


def burst_sample(client: Client, calls: int, in_flight: int, latencies: list[float]) -> Sample:
    """Throughput (calls/s) of `calls` single-text embeds, `in_flight` at a time; latencies collected."""

    async def one(i: int) -> None:
        started = time.perf_counter()
        result = await client.call_tool("embed", {"input": f"text {i}: {TEXT}"})
        if result.is_error:
            raise RuntimeError(f"embed failed during the burst: {result.content}")
        latencies.append((time.perf_counter() - started) * 1000)

    async def worker(start: int, count: int) -> None:
        for i in range(start, start + count):
            await one(i)

    async def sample() -> float:
        per = calls // in_flight
        started = time.perf_counter()
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for w in range(in_flight):
                    tg.start_soon(worker, w * per, per)
        return per * in_flight / (time.perf_counter() - started)

    return sample


Counter = Callable[[Callable[[], Awaitable[Any]]], Awaitable[int]]


async def coalescing_rows(
    bench: str, label: str, params_on: Any, params_off: Any, plan: Plan, count: Counter | None
) -> list[Row]:
    """Two gateways differing only in `batching.coalesce`, driven alternately with 16 calls in flight."""
    calls = plan.n(160, 32)
    lat: dict[str, list[float]] = {"on": [], "off": []}
    async with Client(params_on) as on, Client(params_off) as off:
        await check(embed_call(on, TEXT), f"{label} gateway (coalescing)")
        await check(embed_call(off, TEXT), f"{label} gateway (pass-through)")
        on_burst, off_burst = burst_sample(on, calls, 16, lat["on"]), burst_sample(off, calls, 16, lat["off"])
        rounds = await interleave({"on": on_burst, "off": off_burst}, plan.rounds)
        note = ""
        if count is not None:
            requests = (await count(on_burst), await count(off_burst))
            note = f"upstream requests per {calls} calls: {requests[0]} vs {requests[1]}"
    tput_on, tput_off = compare(rounds, "on", "off")
    return [
        Row(
            bench,
            f"16 concurrent 1-text embeds ({label}): coalesced vs pass-through throughput",
            "calls/s",
            tput_on,
            tput_off,
            Target(">=", 1.5),
            note=note,
        ),
        Row(
            bench,
            f"same ({label}): p50 latency coalesced vs pass-through",
            "ms",
            median(lat["on"]),
            median(lat["off"]),
            Target("<=", 1.2),
        ),
    ]


async def bench_coalescing_stdio(plan: Plan) -> list[Row]:
    """6 over stdio: one client with 16 calls in flight (a host running tool calls in parallel).

    Coalescing saves upstream requests, so it shows only where a request costs something: real embedding
    servers spend milliseconds per request before the first text.
    """
    with fake_ollama(latency_ms=UPSTREAM_REQUEST_MS) as url, scratch_home() as home:
        on = gateway_manifests(home / "on", url, {"batching": {"coalesce": True}})
        off = gateway_manifests(home / "off", url, {"batching": {"coalesce": False}})

        async def count(run: Callable[[], Awaitable[Any]]) -> int:
            return await _count(url, run)

        label = f"Ollama, MCP stdio, {UPSTREAM_REQUEST_MS:g} ms per upstream request"
        params_on, params_off = gateway_params(home / "s-on", on), gateway_params(home / "s-off", off)
        return await coalescing_rows("6-stdio", label, params_on, params_off, plan, count)


async def bench_coalescing_http(plan: Plan) -> list[Row]:
    """6 over HTTP adapters: Streamable HTTP gateways (many clients share one), an upstream with a per-request cost."""
    with fake_ollama(latency_ms=UPSTREAM_REQUEST_MS) as url, scratch_home() as home:
        on = gateway_manifests(home / "on", url, {"batching": {"coalesce": True}})
        off = gateway_manifests(home / "off", url, {"batching": {"coalesce": False}})

        async def count(run: Callable[[], Awaitable[Any]]) -> int:
            return await _count(url, run)

        with (
            http_module("server", home / "h-on", "serve", "--manifests", str(on)) as base_on,
            http_module("server", home / "h-off", "serve", "--manifests", str(off)) as base_off,
        ):
            label = f"Ollama over HTTP, {UPSTREAM_REQUEST_MS:g} ms per upstream request"
            return await coalescing_rows("6-http", label, base_on + "/mcp", base_off + "/mcp", plan, count)
