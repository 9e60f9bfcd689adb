"""Embed and rerank answers served again from the cache: audited as hits, admitted like any call, scoped, bounded."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from prometheus_client import CollectorRegistry

from adapters.types import EmbedRequest, EmbedResult, RerankResult, RerankScore, Usage
from server.app import Gateway
from server.calls import Caller, EmbedCall
from server.errors import PolicyDeniedError, RateLimitedError
from server.health import health_report
from server.manifests import ResponseCacheConfig
from server.pipeline import run_call
from server.response_cache import LocalStore, ResponseCache, decode, encode
from server.router import Candidate
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server, settings_for
from tests.support.processes import free_port

pytestmark = pytest.mark.anyio
ROUTES = {"routes": {"embed": ["a/m"], "rerank": ["a/m"], "chat": ["a/m"]}}
ON = {"response_cache": {"enabled": True}}
OFF = {"response_cache": {"enabled": False}}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def finishes(path: Path) -> list[dict[str, Any]]:
    return [r for r in records(path) if r["event"] == "finish"]


def sample(registry: CollectorRegistry, result: str, tool: str = "embed") -> float:
    return registry.get_sample_value("model_gateway_response_cache_total", {"tool": tool, "result": result}) or 0.0


class CanonicalAdapter(FakeAdapter):
    """A backend whose model names are case-insensitive, as Ollama's are."""

    def canonical_model(self, name: str) -> str:
        return name.lower()


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


async def test_the_cache_is_on_by_default_and_an_operator_can_switch_it_off(tmp_path: Path) -> None:
    on, off = FakeAdapter("a"), FakeAdapter("a")
    server, _ = fake_server(tmp_path / "on", {"a": on}, routes=ROUTES)
    async with Client(server) as c:
        for _ in range(2):
            await c.call_tool("embed", {"input": ["same"]})
    server, gateway = fake_server(tmp_path / "off", {"a": off}, routes=ROUTES, performance=OFF)
    async with Client(server) as c:
        for _ in range(2):
            await c.call_tool("embed", {"input": ["same"]})
        report = health_report(gateway.get())
        done = finishes(gateway.get().audit.path)
    assert len(on.calls) == 1 and len(off.calls) == 2 and all("cache" not in f for f in done)
    assert report["shared_state"] == {
        "backend": "local",
        "response_cache": {"enabled": False, "store": "local", "entries": 0, "bytes": 0, "evictions": 0},
    }


async def test_a_repeated_embed_is_answered_from_the_cache_and_audited_as_a_hit(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    server, gateway = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance=ON)
    async with Client(server) as c:
        first = await c.call_tool("embed", {"input": ["same text", "two"]})
        second = await c.call_tool("embed", {"input": ["same text", "two"], "model": "m", "encoding": "base64"})
        other = await c.call_tool("embed", {"input": ["same text", "two"], "dimensions": 4})
        done = finishes(gateway.get().audit.path)
        registry = gateway.get().metrics.registry
        scraped = gateway.get().metrics.render().decode()
    assert len(adapter.calls) == 2  # the second call never reached the adapter; the third differs in dimensions
    assert second.structured_content is not None and second.structured_content["embeddings_b64"]
    assert [r["outcome"] for r in second.structured_content["route"]] == ["cached"]
    assert [f.get("cache") for f in done] == ["miss", "hit", "miss"]
    assert done[1]["response_sha256"] == done[0]["response_sha256"]  # the same evidence as the served answer
    assert done[1]["attempts"] == [["a", "cached"]] and done[1]["adapter"] == "a"
    assert other.structured_content is not None and other.structured_content["dimensions"] == 8
    assert (sample(registry, "hit"), sample(registry, "miss"), sample(registry, "store")) == (1, 2, 2)
    assert "model_gateway_response_cache_entries 2.0" in scraped
    assert first.structured_content is not None


async def test_spellings_of_one_model_share_an_entry(tmp_path: Path) -> None:
    adapter = CanonicalAdapter("a")
    server, gateway = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance=ON)
    async with Client(server) as c:
        for model in ("a/M", "a/m", "m"):
            result = await c.call_tool("embed", {"input": ["one text"], "model": model})
            assert not result.is_error, result.content
        done = finishes(gateway.get().audit.path)
    assert len(adapter.calls) == 1
    assert [f["cache"] for f in done] == ["miss", "hit", "hit"]


async def test_chat_is_never_cached(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    server, gateway = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance=ON)
    async with Client(server) as c:
        for _ in range(2):
            await c.call_tool("chat", {"messages": [{"role": "user", "content": "hello there"}]})
        done = finishes(gateway.get().audit.path)
    assert len(adapter.calls) == 2 and all("cache" not in f for f in done)


async def test_rate_limits_and_policy_apply_to_a_call_the_cache_could_answer(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    perf = {
        "response_cache": {"enabled": True, "shared_models": ["a/*"]},
        "rate_limits": {"rules": [{"id": "one-each", "tool": "embed", "rate_per_s": 0.001, "burst": 1}]},
    }
    policy = {"rules": [{"id": "not-bob", "effect": "deny", "match": {"principal": ["bob"]}}]}
    _, gateway = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance=perf, policy=policy)
    async with gateway.running() as state:
        await run_call(state, EmbedCall(Caller("alice"), ("shared text",)))
        with pytest.raises(RateLimitedError):
            await run_call(state, EmbedCall(Caller("alice"), ("shared text",)))
        with pytest.raises(PolicyDeniedError, match="not-bob"):
            await run_call(state, EmbedCall(Caller("bob"), ("shared text",)))
        hit = await run_call(state, EmbedCall(Caller("carol"), ("shared text",)))  # a shared model: carol may read it
        trail = records(state.audit.path)
    assert len(adapter.calls) == 1 and [r["outcome"] for r in hit.route] == ["cached"]
    assert [(r["event"], r["principal"], r.get("cache")) for r in trail if r["event"] in ("deny", "finish")] == [
        ("finish", "alice", "miss"),
        ("deny", "alice", None),
        ("deny", "bob", None),
        ("finish", "carol", "hit"),
    ]


async def test_a_session_in_privacy_mode_neither_reads_nor_fills_the_cache(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    perf = {"response_cache": {"enabled": True, "shared_models": ["a/*"]}}  # shared: any principal may read
    server, gateway = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance=perf)
    async with Client(server) as c:
        await c.call_tool("embed", {"input": ["stored before"]})
        switched = await c.call_tool("privacy", {"enable": True})
        assert switched.structured_content is not None and switched.structured_content["privacy_mode"] is True
        for text in ("stored before", "private text", "private text"):
            result = await c.call_tool("embed", {"input": [text]})
            assert result.structured_content is not None and result.structured_content["route"][0]["outcome"] == "ok"
        done = finishes(gateway.get().audit.path)
        registry = gateway.get().metrics.registry
        store = gateway.get().response_cache.store
    assert len(adapter.calls) == 4  # nothing the private session asked was answered from the cache
    assert isinstance(store, LocalStore) and len(store) == 1  # nor left in it: only the entry stored before
    assert [f.get("cache") for f in done] == ["miss", None, None, None]
    assert (sample(registry, "hit"), sample(registry, "store")) == (0, 1)


async def test_a_call_in_the_operators_privacy_mode_never_touches_the_cache(tmp_path: Path) -> None:
    cache = ResponseCache(ResponseCacheConfig(enabled=True), LocalStore(10, 10_000), CollectorRegistry())
    assert cache.holds(EmbedCall(Caller("alice"), ("t",)))
    assert not cache.holds(EmbedCall(Caller("alice", privacy=True), ("t",)))
    adapter = FakeAdapter("a")
    gateway = Gateway(replace(settings_for(tmp_path, routes=ROUTES, performance=ON), privacy_mode=True), {"a": adapter})
    async with Client(gateway.server) as c:
        for _ in range(2):
            await c.call_tool("embed", {"input": ["same"]})
        done = finishes(gateway.get().audit.path)
    assert len(adapter.calls) == 2 and all("cache" not in f for f in done)


def served(texts: list[str]) -> EmbedResult:
    return EmbedResult("m", [[0.5, -0.25, 1e-7, 3.0000000000000004] for _ in texts], Usage(len(texts)))


async def test_principals_never_share_entries_unless_the_model_is_declared_shared() -> None:
    candidate = Candidate("a", "m", "local")

    async def ask(cache: ResponseCache, principal: str) -> str:
        call = EmbedCall(Caller(principal), ("t",))
        if await cache.lookup(call, candidate) is not None:
            return "hit"
        await cache.keep(call, candidate, served(["t"]))
        return "miss"

    def cache(**config: Any) -> ResponseCache:
        cfg = ResponseCacheConfig.model_validate({"enabled": True, **config})
        return ResponseCache(cfg, LocalStore(10, 10_000), CollectorRegistry())

    private = cache()
    assert [await ask(private, p) for p in ("alice", "bob", "alice")] == ["miss", "miss", "hit"]
    shared = cache(shared_models=["a/*"])
    assert [await ask(shared, p) for p in ("alice", "bob")] == ["miss", "hit"]


def test_entries_round_trip_exactly_and_damaged_ones_do_not_decode() -> None:
    embed = served(["a", "b"])
    assert decode("embed", encode(embed) or b"") == embed
    rerank = RerankResult("m", (RerankScore(2, 0.9), RerankScore(0, 1)), "bi-encoder-cosine", Usage(3))
    assert decode("rerank", encode(rerank) or b"") == rerank
    blob = encode(embed) or b""
    for damaged in (blob[:-3], blob.replace(b'"v":1', b'"v":2'), b"\xff\xfe", b'{"v":1}', b"[]"):
        assert decode("embed", damaged) is None
    assert decode("rerank", blob) is None  # an embed entry is not a rerank answer
    assert encode(EmbedRequest("m", ("t",))) is None  # only answers are entries


async def test_replicas_share_entries_through_redis_and_ignore_damaged_ones(tmp_path: Path, redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    perf = {"shared_state": {"url": redis_url, "key_prefix": prefix, "deadline_ms": 5000}, **ON}
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
        fourth = await one.call_tool("rerank", {**args, "return_documents": True})
        report = health_report(state)
    assert [len(a.calls) for a in adapters] == [1, 1]  # second: a hit; third: damaged entry, served and rewritten
    results = [r.structured_content["results"] for r in (first, second, third, fourth) if r.structured_content]
    assert results[0] == results[1] == results[2]
    assert [{"index": r["index"], "relevance_score": r["relevance_score"]} for r in results[3]] == results[0]
    assert third.structured_content is not None and third.structured_content["route"][0]["outcome"] == "ok"
    assert fourth.structured_content is not None and fourth.structured_content["route"][0]["outcome"] == "cached"
    assert results[3][0]["document"] == args["documents"][results[3][0]["index"]]  # the caller's own documents
    assert report["shared_state"]["backend"] == "redis" and report["shared_state"]["up"] is True
    assert report["shared_state"]["response_cache"]["store"] == "redis"


async def test_an_answer_over_the_entry_cap_is_served_but_not_stored(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    perf = {"response_cache": {"enabled": True, "max_entry_bytes": 256}}
    server, gateway = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance=perf)
    texts = [f"text {i}" for i in range(8)]  # 8 vectors of 8 floats: well over 256 bytes encoded
    async with Client(server) as c:
        for _ in range(2):
            await c.call_tool("embed", {"input": texts})
        registry = gateway.get().metrics.registry
    assert len(adapter.calls) == 2
    assert sample(registry, "too_large") == 2


async def test_with_redis_down_the_cache_is_a_miss_and_health_says_redis_is_down(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    perf = {"shared_state": {"url": f"redis://127.0.0.1:{free_port()}/0", "on_unavailable": "open"}, **ON}
    server, gateway = fake_server(tmp_path, {"a": adapter}, routes=ROUTES, performance=perf)
    async with Client(server) as c:
        with anyio.fail_after(10):
            results = [await c.call_tool("embed", {"input": ["same"]}) for _ in range(2)]
        report = health_report(gateway.get())
    assert not any(r.is_error for r in results) and len(adapter.calls) == 2
    assert report["status"] == "degraded" and report["shared_state"]["up"] is False
