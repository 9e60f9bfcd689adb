"""Embed and rerank answers served again from the cache: audited as hits, scoped to the principal, bounded."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from prometheus_client import CollectorRegistry

from adapters.types import EmbedResult, RerankResult, RerankScore, Usage
from server.health import health_report
from server.manifests import ResponseCacheConfig
from server.response_cache import CacheQuery, LocalStore, ResponseCache, decode, encode
from server.router import Candidate
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server
from tests.support.processes import free_port
from tests.support.redis_server import MISSING, redis_server, run_redis

pytestmark = pytest.mark.anyio
ROUTES = {"routes": {"embed": ["a/m"], "rerank": ["a/m"], "chat": ["a/m"]}}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if redis_server() is None:
        pytest.skip(MISSING)
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def finishes(path: Path) -> list[dict[str, Any]]:
    return [r for r in records(path) if r["event"] == "finish"]


async def test_the_lru_drops_the_least_recently_used_past_either_bound_and_expired_entries() -> None:
    now = [0.0]
    store = LocalStore(max_entries=3, max_bytes=100, clock=lambda: now[0])
    for k in "abc":
        await store.put(k, b"x" * 10, ttl_s=60)
    assert await store.get("a") == b"x" * 10  # a is now the most recently used
    await store.put("d", b"x" * 10, ttl_s=60)
    assert [await store.get(k) is not None for k in "abcd"] == [True, False, True, True]
    await store.put("big", b"y" * 80, ttl_s=60)  # 4 entries, 110 bytes: the least recently used (a) goes
    assert (store.bytes, len(store), store.evictions) == (100, 3, 2)
    assert await store.get("a") is None and await store.get("big") is not None
    await store.put("huge", b"z" * 101, ttl_s=60)  # larger than the whole cache: not stored
    assert await store.get("huge") is None
    now[0] = 61.0
    assert await store.get("big") is None and len(store) == 2


async def test_a_repeated_embed_is_answered_from_the_cache_and_audited_as_a_hit(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    server, ref = fake_server(tmp_path, {"a": adapter}, routes=ROUTES)
    async with Client(server) as c:
        first = await c.call_tool("embed", {"input": ["same text", "two"]})
        second = await c.call_tool("embed", {"input": ["same text", "two"], "model": "m"})
        other = await c.call_tool("embed", {"input": ["same text", "two"], "dimensions": 4})
        done = finishes(ref.get().audit.path)
        registry = ref.get().metrics.registry
    assert len(adapter.calls) == 2  # the second call never reached the adapter; the third differs in dimensions
    assert second.structured_content["embeddings"] == first.structured_content["embeddings"]
    assert [r["outcome"] for r in second.structured_content["route"]] == ["cached"]
    assert [f.get("cache") for f in done] == ["miss", "hit", "miss"]
    assert done[1]["response_sha256"] == done[0]["response_sha256"]
    assert done[1]["attempts"] == [["a", "cached"]] and done[1]["adapter"] == "a"
    assert other.structured_content["dimensions"] == 8  # the fake ignores dimensions; the key did not
    assert registry.get_sample_value("model_gateway_response_cache_total", {"tool": "embed", "result": "hit"}) == 1


async def test_chat_is_never_cached(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    server, ref = fake_server(tmp_path, {"a": adapter}, routes=ROUTES)
    async with Client(server) as c:
        for _ in range(2):
            await c.call_tool("chat", {"messages": [{"role": "user", "content": "hello there"}]})
        done = finishes(ref.get().audit.path)
    assert len(adapter.calls) == 2 and all("cache" not in f for f in done)


async def test_the_cache_can_be_switched_off(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    server, _ = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance={"response_cache": {"enabled": False}})
    async with Client(server) as c:
        for _ in range(2):
            await c.call_tool("embed", {"input": ["same"]})
    assert len(adapter.calls) == 2


def served(texts: list[str]) -> EmbedResult:
    return EmbedResult("m", [[0.5, -0.25, 1e-7, 3.0000000000000004] for _ in texts], Usage(len(texts)))


async def test_principals_never_share_entries_unless_the_model_is_declared_shared() -> None:
    calls: list[str] = []
    candidate = Candidate("a", "m", "local")

    async def run_for(cache: ResponseCache, principal: str) -> str | None:
        async def route() -> tuple[EmbedResult, Candidate]:
            calls.append(principal)
            return served(["t"]), candidate

        query = CacheQuery("embed", "embed", principal, {"input": ["t"], "model": None})
        _, _, outcome = await cache.serve(query, [candidate], [], route)
        return outcome

    private = ResponseCache(ResponseCacheConfig(), LocalStore(10, 10_000), CollectorRegistry())
    assert [await run_for(private, p) for p in ("alice", "bob", "alice")] == ["miss", "miss", "hit"]
    shared = ResponseCache(ResponseCacheConfig(shared_models=["a/*"]), LocalStore(10, 10_000), CollectorRegistry())
    assert [await run_for(shared, p) for p in ("alice", "bob")] == ["miss", "hit"]
    assert calls == ["alice", "bob", "alice"]


def test_entries_round_trip_exactly_and_damaged_ones_do_not_decode() -> None:
    embed = served(["a", "b"])
    assert decode("embed", encode(embed) or b"") == embed
    rerank = RerankResult("m", (RerankScore(2, 0.9), RerankScore(0, 1)), "bi-encoder-cosine", Usage(3))
    assert decode("rerank", encode(rerank) or b"") == rerank
    blob = encode(embed) or b""
    for damaged in (blob[:-3], blob.replace(b'"v":1', b'"v":2'), b"\xff\xfe", b'{"v":1}', b"[]"):
        assert decode("embed", damaged) is None
    assert decode("rerank", blob) is None  # an embed entry is not a rerank answer


async def test_replicas_share_entries_through_redis_and_ignore_damaged_ones(tmp_path: Path, redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    perf = {"shared_state": {"url": redis_url, "key_prefix": prefix, "deadline_ms": 5000}}
    adapters = [FakeAdapter("a"), FakeAdapter("a")]
    servers = [
        fake_server(tmp_path / f"r{i}", {"a": a}, routes=ROUTES, performance=perf) for i, a in enumerate(adapters)
    ]
    args = {"query": "red fox", "documents": ["a red fox", "blue sky", "fox"], "top_n": 2}
    async with Client(servers[0][0]) as one, Client(servers[1][0]) as two:
        first = await one.call_tool("rerank", args)
        second = await two.call_tool("rerank", args)
        state = servers[1][1].get()
        assert state.shared_state is not None
        for key in await state.shared_state.client.keys(prefix + "rc:*"):
            await state.shared_state.client.set(key, b'{"v":1,"model":"m","results":"not a list"}')
        third = await two.call_tool("rerank", args)
        fourth = await one.call_tool("rerank", args)
        report = health_report(state)
    assert [len(a.calls) for a in adapters] == [1, 1]  # second: a hit; third: damaged entry, served and rewritten
    assert (
        second.structured_content["results"]
        == first.structured_content["results"]
        == fourth.structured_content["results"]
    )
    assert third.structured_content["route"][0]["outcome"] == "ok"
    assert fourth.structured_content["route"][0]["outcome"] == "cached"
    assert report["shared_state"]["backend"] == "redis" and report["shared_state"]["up"] is True
    assert report["shared_state"]["response_cache"]["store"] == "redis"


async def test_an_answer_over_the_entry_cap_is_served_but_not_stored(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    perf = {"response_cache": {"max_entry_bytes": 256}}
    server, ref = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance=perf)
    texts = [f"text {i}" for i in range(8)]  # 8 vectors of 8 floats: well over 256 bytes encoded
    async with Client(server) as c:
        for _ in range(2):
            await c.call_tool("embed", {"input": texts})
        registry = ref.get().metrics.registry
    assert len(adapter.calls) == 2
    assert (
        registry.get_sample_value("model_gateway_response_cache_total", {"tool": "embed", "result": "too_large"}) == 2
    )


async def test_with_redis_down_the_cache_is_a_miss_and_health_says_redis_is_down(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    perf = {"shared_state": {"url": f"redis://127.0.0.1:{free_port()}/0", "on_unavailable": "open"}}
    server, ref = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance=perf)
    async with Client(server) as c:
        with anyio.fail_after(10):
            results = [await c.call_tool("embed", {"input": ["same"]}) for _ in range(2)]
        report = health_report(ref.get())
    assert not any(r.is_error for r in results) and len(adapter.calls) == 2
    assert report["status"] == "degraded" and report["shared_state"]["up"] is False
