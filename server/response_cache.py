"""Exact-match cache of embed and rerank answers; never chat.

The key is sha256 over the canonical JSON of: the entry format, the scope,
the tool, the adapter and model that serve the call (the candidate, never the
caller's alias), and the canonical request without the caller's model name
(texts, dimensions; query, documents, top_n). The scope is the caller's
principal, so one principal never reads another's answers, unless the model's
`adapter/model` matches `response_cache.shared_models` (default: none).

The lookup uses the first candidate policy and routing allow for the call; a
served answer is stored under the candidate that served it. An entry is the
answer encoded as JSON, read back through a schema (an entry that does not
validate is a miss); one larger than `max_entry_bytes` is not stored. The
store is an LRU in this process, bounded in entries and bytes, or Redis when
shared state is configured (entries expire after `ttl_s`; a Redis failure is
a miss, never an error).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal, Protocol, TypeVar, cast

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, ValidationError

from adapters.types import Capability, EmbedResult, RerankMethod, RerankResult, RerankScore, Usage
from server.manifests import ResponseCacheConfig
from server.router import Attempt, Candidate
from server.shared_state import SharedState, SharedStateDown

T = TypeVar("T")
FORMAT = 1
CACHED: frozenset[str] = frozenset({"embed", "rerank"})
CacheOutcome = Literal["hit", "miss"]


class CacheStore(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, blob: bytes, ttl_s: float) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class LocalStore:
    """Least recently used entries go first once either bound is passed; expired ones on sight."""

    name = "local"

    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def put(self, key: str, blob: bytes, ttl_s: float) -> None:
        if len(blob) > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, blob)
        self.bytes += len(blob)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1

    def _drop(self, key: str) -> None:
        _, blob = self._entries.pop(key)
        self.bytes -= len(blob)

    def stats(self) -> dict[str, Any]:
        return {"store": self.name, "entries": len(self._entries), "bytes": self.bytes, "evictions": self.evictions}


class RedisStore:
    """Entries in the shared state under `<prefix>rc:<key>`, expiring after the TTL."""

    name = "redis"

    def __init__(self, shared: SharedState, prefix: str) -> None:
        self.shared = shared
        self.prefix = prefix + "rc:"

    async def get(self, key: str) -> bytes | None:
        try:
            found = await self.shared.call("cache_get", lambda r: r.get(self.prefix + key))
        except SharedStateDown:
            return None
        return found if isinstance(found, bytes) else None

    async def put(self, key: str, blob: bytes, ttl_s: float) -> None:
        try:
            await self.shared.call("cache_set", lambda r: r.set(self.prefix + key, blob, px=max(1, int(ttl_s * 1000))))
        except SharedStateDown:
            return

    def stats(self) -> dict[str, Any]:
        return {"store": self.name}


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]
    model: str
    input_tokens: int
    output_tokens: int


class _EmbedEntry(_Entry):
    # float | int keeps each number as the adapter returned it, so audit evidence hashes match a served answer
    vectors: list[list[float | int]]
    truncated: int
    max_input_tokens: int | None


class _RerankEntry(_Entry):
    results: list[tuple[int, float | int]]
    method: RerankMethod


def encode(value: object) -> bytes | None:
    """An answer as a cache entry; None for what the cache does not hold."""
    if isinstance(value, EmbedResult):
        vectors = [list(v) for v in value.vectors]
        extra: dict[str, Any] = {"vectors": vectors, "truncated": value.truncated}
        extra["max_input_tokens"] = value.max_input_tokens
    elif isinstance(value, RerankResult):
        extra = {"results": [(s.index, s.relevance_score) for s in value.results], "method": value.method}
    else:
        return None
    usage = {"input_tokens": value.usage.input_tokens, "output_tokens": value.usage.output_tokens}
    return orjson.dumps({"v": FORMAT, "model": value.model, **usage, **extra})


def decode(capability: str, blob: bytes) -> EmbedResult | RerankResult | None:
    """A cache entry back as an answer; None when it does not validate (foreign or damaged bytes)."""
    try:
        raw = orjson.loads(blob)
        if capability == "embed":
            e = _EmbedEntry.model_validate(raw)
            usage = Usage(e.input_tokens, e.output_tokens)
            return EmbedResult(e.model, e.vectors, usage, e.truncated, e.max_input_tokens)
        if capability == "rerank":
            r = _RerankEntry.model_validate(raw)
            scores = tuple(RerankScore(i, s) for i, s in r.results)  # type: ignore[arg-type]
            return RerankResult(r.model, scores, r.method, Usage(r.input_tokens, r.output_tokens))
    except (orjson.JSONDecodeError, ValidationError):
        return None
    return None


@dataclass(frozen=True, slots=True)
class CacheQuery:
    tool: str
    capability: Capability
    principal: str
    request: Mapping[str, Any]


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "model_gateway_response_cache_total",
            "Response cache lookups and stores by result.",
            ["tool", "result"],
            registry=registry,
        )
        p = "model_gateway_response_cache_"
        self.entries = Gauge(p + "entries", "Entries in the in-process cache.", registry=registry)
        self.bytes = Gauge(p + "bytes", "Encoded bytes in the in-process cache.", registry=registry)


class ResponseCache:
    def __init__(self, config: ResponseCacheConfig, store: CacheStore, registry: CollectorRegistry) -> None:
        self.config = config
        self.store = store
        self.metrics = CacheMetrics(registry)

    def key(self, query: CacheQuery, candidate: Candidate) -> str:
        shared = any(fnmatchcase(candidate.label, glob) for glob in self.config.shared_models)
        request = {k: v for k, v in query.request.items() if k != "model"}
        material = {
            "v": FORMAT,
            "scope": "*" if shared else query.principal,
            "tool": query.tool,
            "adapter": candidate.adapter,
            "model": candidate.model,
            "request": request,
        }
        return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()

    async def serve(
        self,
        query: CacheQuery,
        candidates: Sequence[Candidate],
        attempts: list[Attempt],
        run: Callable[[], Awaitable[tuple[T, Candidate]]],
    ) -> tuple[T, Candidate, CacheOutcome | None]:
        """A stored answer for the first candidate, else `run()`'s answer, stored; outcome None when not cached."""
        if not self.config.enabled or query.capability not in CACHED or not candidates:
            value, chosen = await run()
            return value, chosen, None
        first = candidates[0]
        started = time.perf_counter()
        blob = await self.store.get(self.key(query, first))
        found = decode(query.capability, blob) if blob is not None else None
        if blob is not None and found is None:
            self._count(query, "invalid")
        if found is not None:
            attempts.append(Attempt(first.adapter, first.model, "cached", (time.perf_counter() - started) * 1000))
            self._count(query, "hit")
            return cast(T, found), first, "hit"
        self._count(query, "miss")
        value, chosen = await run()
        await self._store(query, chosen, value)
        return value, chosen, "miss"

    async def _store(self, query: CacheQuery, chosen: Candidate, value: object) -> None:
        blob = encode(value)
        if blob is None:
            return
        if len(blob) > self.config.max_entry_bytes:
            self._count(query, "too_large")
            return
        await self.store.put(self.key(query, chosen), blob, self.config.ttl_s)
        self._count(query, "store")

    def _count(self, query: CacheQuery, result: str) -> None:
        self.metrics.lookups.labels(query.tool, result).inc()
        if isinstance(self.store, LocalStore):
            self.metrics.entries.set(len(self.store))
            self.metrics.bytes.set(self.store.bytes)

    def health(self) -> dict[str, Any]:
        return {"enabled": self.config.enabled, **self.store.stats()}
