"""Exact-match cache of embed and rerank answers: step 4 of the call path; never chat.

The pipeline asks it after a call is admitted (limits, rate limits, routing,
policy and the audit start record all happen first, for a hit as for a served
call): `lookup()` under the first candidate policy and routing allow, and on a
miss `keep()` under the candidate that served the answer.

The key is sha256 over the canonical JSON of: the entry format, the scope, the
tool, the adapter and the candidate's model, which the router has already put
in the adapter's canonical spelling (`adapters.naming.canonical_model`, so
`LLAMA3` and `llama3:latest` share an entry on Ollama), and the call's canonical audit form without the caller's
model name (texts, dimensions; query, documents, top_n). How an answer is
published (float or base64, documents echoed or not) is not in the key: the
cache holds the adapter's answer and the call formats it. The scope is the
caller's principal, so one principal never reads another's answers, unless
the model's `adapter/model` matches `response_cache.shared_models` (default:
none). Inputs are never stored: a key is a hash, an entry holds vectors or
scores. The request is hashed once per call (`request_digest`), however many
candidates are looked up or kept under. The cache is on unless
`response_cache.enabled` is false, and a call in privacy mode never touches it.

An entry is the answer encoded as JSON, read back through a schema (one that
does not validate is a miss); one larger than `max_entry_bytes` is not stored.
The store is an LRU in this process, bounded in entries and bytes, or Redis
when shared state is configured (entries expire after `ttl_s`; a Redis failure
is a miss, never an error).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any, Literal, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, ValidationError

from adapters.types import Capability, EmbedResult, RerankMethod, RerankResult, RerankScore, Usage
from server.calls import ToolCall
from server.manifests import ResponseCacheConfig
from server.router import Candidate
from server.shared_state import SharedState, SharedStateDown

FORMAT = 1
CACHED: frozenset[Capability] = frozenset({"embed", "rerank"})
CacheOutcome = Literal["hit", "miss"]
Answer = EmbedResult | RerankResult


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


def decode(capability: Capability, blob: bytes) -> Answer | None:
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


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry, store: CacheStore) -> None:
        self.lookups = Counter(
            "model_gateway_response_cache_total",
            "Response cache lookups and stores by result.",
            ["tool", "result"],
            registry=registry,
        )
        if isinstance(store, LocalStore):  # read when scraped: nothing is set on the call path
            p = "model_gateway_response_cache_"
            Gauge(p + "entries", "Entries in the in-process cache.", registry=registry).set_function(store.__len__)
            Gauge(p + "bytes", "Encoded bytes in the in-process cache.", registry=registry).set_function(
                lambda: store.bytes
            )


def request_digest(call: ToolCall[Any]) -> str:
    """sha256 of the call's canonical request without the caller's model name (the candidate names the model)."""
    request = {k: v for k, v in call.canonical().items() if k != "model"}
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ResponseCache:
    def __init__(self, config: ResponseCacheConfig, store: CacheStore, registry: CollectorRegistry) -> None:
        self.config = config
        self.store = store
        self.metrics = CacheMetrics(registry, store)

    def holds(self, call: ToolCall[Any]) -> bool:
        """Whether this call's answers are cached at all: switched on, embed or rerank, and not in privacy mode.

        A call in privacy mode (the operator's or its session's) is neither answered from the cache nor stored:
        an entry is derived from its input and may live in a Redis on another host, or be read by every
        principal under `shared_models`.
        """
        return self.config.enabled and call.capability in CACHED and not call.caller.privacy

    def key(self, call: ToolCall[Any], candidate: Candidate, digest: str | None = None) -> str:
        """The entry's key; `digest`: the call's `request_digest`, when the caller already has it."""
        model = candidate.model
        shared = any(fnmatchcase(f"{candidate.adapter}/{model}", glob) for glob in self.config.shared_models)
        material = {
            "v": FORMAT,
            "scope": "*" if shared else call.caller.principal,
            "tool": call.tool,
            "adapter": candidate.adapter,
            "model": model,
            "request": digest or request_digest(call),
        }
        return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()

    async def lookup(self, call: ToolCall[Any], candidate: Candidate, digest: str | None = None) -> Answer | None:
        """The stored answer to this call from this candidate, or None (counted as a hit or a miss)."""
        blob = await self.store.get(self.key(call, candidate, digest))
        found = decode(call.capability, blob) if blob is not None else None
        if blob is not None and found is None:
            self._count(call, "invalid")
        self._count(call, "miss" if found is None else "hit")
        return found

    async def keep(self, call: ToolCall[Any], chosen: Candidate, value: object, digest: str | None = None) -> None:
        """Keep the answer `chosen` served, unless it is larger than one entry may be."""
        blob = encode(value)
        if blob is None:
            return
        if len(blob) > self.config.max_entry_bytes:
            self._count(call, "too_large")
            return
        await self.store.put(self.key(call, chosen, digest), blob, self.config.ttl_s)
        self._count(call, "store")

    def _count(self, call: ToolCall[Any], result: str) -> None:
        self.metrics.lookups.labels(call.tool, result).inc()

    def health(self) -> dict[str, Any]:
        return {"enabled": self.config.enabled, **self.store.stats()}
