"""Concurrent adapter discovery -> an immutable Snapshot, cached on disk.

Every adapter is probed at once, each under its own deadline; a slow or dead
adapter never delays the others. The snapshot is swapped in atomically and
written to the cache so the next start serves from it immediately and
revalidates in the background (stale-while-revalidate).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

from adapters.base import Adapter, ModelInfo, ProbeResult
from adapters.errors import safe_detail
from adapters.naming import canonical_model
from adapters.types import Capability, Privacy
from server.manifests import DiscoveryConfig
from server.statefile import load_json, warn_once, write_atomic

log = logging.getLogger("model_gateway.discovery")

Status = Literal["up", "down", "unknown"]
SNAPSHOT_VERSION = 1
SNAPSHOT_MAX_BYTES = 8 << 20  # the file's size bounds every field; the schema bounds the counts
_MAX_ADAPTERS = 1_000
_MAX_MODELS = 10_000
MIN_REFRESH_INTERVAL_S = 1.0
ProbeObserver = Callable[[str, float, bool], None]


@dataclass(frozen=True, slots=True)
class AdapterStatus:
    name: str
    kind: str
    privacy: Privacy
    status: Status
    models: tuple[ModelInfo, ...]
    fingerprint: str
    latency_ms: float | None = None
    error: str | None = None
    probed_at: float | None = None
    version: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    unlisted: frozenset[str] = frozenset()  # canonical names of declared models the server did not list

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps: set[Capability] = set()
        for m in self.models:
            caps |= m.capabilities
        return frozenset(caps)

    @property
    def routable(self) -> bool:
        return self.status != "down"


@dataclass(frozen=True, slots=True)
class Snapshot:
    adapters: Mapping[str, AdapterStatus]
    created_at: float
    source: Literal["empty", "cache", "probe"]

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.created_at)


def fingerprint(adapter: Adapter) -> str:
    info = adapter.info
    raw = json.dumps([info.name, info.kind, info.privacy, info.endpoint, [m.name for m in info.models]])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _merge_models(adapter: Adapter, *groups: tuple[ModelInfo, ...]) -> tuple[ModelInfo, ...]:
    """Models under their canonical names (the adapter's spelling rule), the first of each name kept.

    The snapshot is what routing, policy, audit and health read, so every spelling of one model is
    one entry there.
    """
    found: dict[str, ModelInfo] = {}
    for m in (m for group in groups for m in group):
        name = canonical_model(adapter, m.name)
        if name not in found:
            found[name] = m if name == m.name else replace(m, name=name)
    return tuple(found.values())


def initial_status(adapter: Adapter) -> AdapterStatus:
    info = adapter.info
    models = _merge_models(adapter, info.models)
    return AdapterStatus(info.name, info.kind, info.privacy, "unknown", models, fingerprint(adapter))


def status_from_probe(adapter: Adapter, result: ProbeResult, latency_ms: float, fp: str) -> AdapterStatus:
    """`fp` is the fingerprint taken before any probe: adapters may widen `info` once they have seen a server."""
    info = adapter.info
    return AdapterStatus(
        name=info.name,
        kind=info.kind,
        privacy=info.privacy,
        status="up" if result.ok else "down",
        models=_merge_models(adapter, info.models, result.models),
        fingerprint=fp,
        latency_ms=round(latency_ms, 3),
        error=result.error,
        probed_at=time.time(),
        version=result.version,
        details=dict(result.details),
        unlisted=frozenset(canonical_model(adapter, n) for n in result.unlisted),
    )


# --- cache (de)serialisation ----------------------------------------------------


def _model_to_json(m: ModelInfo) -> dict[str, Any]:
    return {
        "name": m.name,
        "capabilities": sorted(m.capabilities),
        "family": m.family,
        "dimensions": m.dimensions,
        "max_input_tokens": m.max_input_tokens,
    }


def snapshot_to_json(snap: Snapshot) -> dict[str, Any]:
    adapters = {}
    for name, s in snap.adapters.items():
        adapters[name] = {
            "kind": s.kind,
            "privacy": s.privacy,
            "status": s.status,
            "models": [_model_to_json(m) for m in s.models],
            "fingerprint": s.fingerprint,
            "latency_ms": s.latency_ms,
            "error": s.error,
            "probed_at": s.probed_at,
            "version": s.version,
            "details": dict(s.details),
            "unlisted": sorted(s.unlisted),
        }
    return {"version": SNAPSHOT_VERSION, "created_at": snap.created_at, "adapters": adapters}


class _ModelJSON(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    capabilities: list[Capability] = Field(max_length=8)
    family: str | None = None
    dimensions: int | None = Field(default=None, ge=1)
    max_input_tokens: int | None = Field(default=None, ge=1)


class _StatusJSON(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    privacy: Privacy
    status: Status
    models: list[_ModelJSON] = Field(max_length=_MAX_MODELS)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{16}$")
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    error: str | None = None
    probed_at: float | None = Field(default=None, allow_inf_nan=False)
    version: str | None = None
    details: dict[str, str] = Field(default_factory=dict)
    unlisted: list[str] = Field(default_factory=list, max_length=_MAX_MODELS)


class _SnapshotJSON(BaseModel):
    """The cache file's schema; a file of another version or shape is no snapshot."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1]
    created_at: float = Field(ge=0, allow_inf_nan=False)
    adapters: dict[str, _StatusJSON] = Field(max_length=_MAX_ADAPTERS)


def _status_from_json(name: str, raw: _StatusJSON) -> AdapterStatus:
    models = tuple(
        ModelInfo(
            name=m.name,
            capabilities=frozenset(m.capabilities),
            family=m.family,
            dimensions=m.dimensions,
            max_input_tokens=m.max_input_tokens,
        )
        for m in raw.models
    )
    return AdapterStatus(
        name=name,
        kind=raw.kind,
        privacy=raw.privacy,
        status=raw.status,
        models=models,
        fingerprint=raw.fingerprint,
        latency_ms=raw.latency_ms,
        error=raw.error,
        probed_at=raw.probed_at,
        version=raw.version,
        details=dict(raw.details),
        unlisted=frozenset(raw.unlisted),
    )


def read_cached_snapshot(path: Path, adapters: Mapping[str, Adapter]) -> Snapshot | None:
    """The cached snapshot, keeping only adapters whose manifest is unchanged.

    A file that is untrusted (owner, mode), unreadable, of another version or shape, or dated in the
    future is ignored and reported once; the first refresh rewrites it.
    """
    raw = load_json(path, _SnapshotJSON.model_validate_json, SNAPSHOT_MAX_BYTES, log.name)
    if raw is None:
        return None
    if raw.created_at > time.time() + 60:
        warn_once(log.name, path, "dated in the future")
        return None
    statuses = {}
    for name, adapter in adapters.items():
        entry = raw.adapters.get(name)
        cached = _status_from_json(name, entry) if entry is not None else None
        ok = cached is not None and cached.fingerprint == fingerprint(adapter)
        statuses[name] = cached if ok and cached else initial_status(adapter)
    return Snapshot(statuses, raw.created_at, "cache")


def write_cached_snapshot(path: Path, snap: Snapshot) -> None:
    """Atomic and private: a reader never sees half a file, nobody else can write it."""
    write_atomic(path, json.dumps(snapshot_to_json(snap), separators=(",", ":")).encode())


# --- the discovery service ------------------------------------------------------


class Discovery:
    def __init__(
        self,
        adapters: Mapping[str, Adapter],
        config: DiscoveryConfig,
        cache_path: Path | None = None,
        on_probe: ProbeObserver | None = None,
    ) -> None:
        self.adapters = dict(adapters)
        self.config = config
        self.cache_path = cache_path
        self._on_probe = on_probe
        self._fingerprints = {n: fingerprint(a) for n, a in self.adapters.items()}
        self._snapshot = Snapshot({n: initial_status(a) for n, a in self.adapters.items()}, 0.0, "empty")
        self._wake = anyio.Event()
        self._refreshed = anyio.Event()
        self.refreshes = 0
        self._last_refresh = -MIN_REFRESH_INTERVAL_S
        # In privacy mode remote adapters are not even probed: no connection leaves for them.
        self.privacy_mode = False
        # wall-clock time of each adapter's last answered and last failed call (one entry per adapter)
        self.last_served: dict[str, float] = {}
        self.last_failed: dict[str, float] = {}

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def load_cache(self) -> bool:
        if self.cache_path is None:
            return False
        cached = read_cached_snapshot(self.cache_path, self.adapters)
        if cached is None:
            return False
        self._snapshot = cached
        return True

    async def _probe_one(self, name: str, adapter: Adapter, out: dict[str, AdapterStatus]) -> None:
        if self.privacy_mode and adapter.info.privacy == "remote":
            previous = self._snapshot.adapters.get(name) or initial_status(adapter)
            out[name] = replace(previous, details={**previous.details, "probe": "skipped: privacy mode"})
            return
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.config.probe_deadline_s):
                result = await adapter.probe()
        except TimeoutError:
            result = ProbeResult(ok=False, error=f"probe timed out after {self.config.probe_deadline_s:g}s")
        except Exception as exc:  # a probe must never take discovery down
            result = ProbeResult(ok=False, error=safe_detail(f"probe failed: {type(exc).__name__}: {exc}"))
        latency = (time.perf_counter() - started) * 1000
        out[name] = status_from_probe(adapter, result, latency, self._fingerprints[name])
        if self._on_probe is not None:
            self._on_probe(name, latency / 1000, result.ok)

    async def refresh(self) -> Snapshot:
        """Probe every adapter concurrently and swap in the new snapshot."""
        results: dict[str, AdapterStatus] = {}
        async with anyio.create_task_group() as tg:
            for name, adapter in self.adapters.items():
                tg.start_soon(self._probe_one, name, adapter, results)
        snap = Snapshot({n: results[n] for n in self.adapters}, time.time(), "probe")
        self._snapshot = snap
        self._last_refresh = time.monotonic()
        self.refreshes += 1
        self._refreshed.set()
        self._refreshed = anyio.Event()
        if self.cache_path is not None:
            try:
                # fsyncs (file and folder) stay off the event loop
                await anyio.to_thread.run_sync(write_cached_snapshot, self.cache_path, snap)
            except OSError as exc:
                warn_once(log.name, self.cache_path, f"not written ({exc.strerror or type(exc).__name__})", "retried")
        return snap

    async def next_refresh(self) -> Snapshot:
        """Wait for the next completed refresh and return its snapshot."""
        await self._refreshed.wait()
        return self._snapshot

    def request_refresh(self) -> None:
        self._wake.set()

    def observe_call(self, adapter: str, ok: bool) -> None:
        """Note when the adapter last served or failed; an outcome that contradicts the snapshot triggers a refresh."""
        current = self._snapshot.adapters.get(adapter)
        if current is None:
            return
        (self.last_served if ok else self.last_failed)[adapter] = time.time()
        if (ok and current.status == "down") or (not ok and current.status == "up"):
            self.request_refresh()

    def _next_delay(self) -> float:
        snap = self._snapshot
        if snap.source == "cache" and self.refreshes == 0:
            return self.config.revalidate_after_start_s
        if snap.source != "probe":
            return 0.0
        delay = self.config.ttl_s - snap.age_s()
        if any(s.status == "down" for s in snap.adapters.values()):
            delay = min(delay, self.config.down_recheck_s)
        return max(0.0, delay)

    async def run(self) -> None:
        """Background loop owned by the server's lifespan task group."""
        while True:
            delay = self._next_delay()
            if delay > 0:
                with anyio.move_on_after(delay if math.isfinite(delay) else None):
                    await self._wake.wait()
            # call outcomes can ask for refreshes at the call rate: one a second at most
            await anyio.sleep(max(0.0, self._last_refresh + MIN_REFRESH_INTERVAL_S - time.monotonic()))
            self._wake = anyio.Event()
            await self.refresh()
