"""The adapter seam: one Protocol every backend implements.

A backend is one module in adapters/ plus a manifest kind; the router and the
pipeline only ever see this Protocol. Most kinds build on the kit (adapters/kit.py).
Model identity is not part of the Protocol: `adapters.naming.canonical_model(adapter,
name)` asks the adapter when it has a rule and keeps the name as given otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

from pydantic import SecretStr

from adapters.types import (
    Capability,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    Privacy,
    RerankRequest,
    RerankResult,
)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    capabilities: frozenset[Capability]
    family: str | None = None
    dimensions: int | None = None
    max_input_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    name: str
    kind: str
    privacy: Privacy
    capabilities: frozenset[Capability]
    models: tuple[ModelInfo, ...]
    endpoint: str | None = None  # safe to show: never carries credentials


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a probe saw. `ok=False` means the adapter cannot serve now."""

    ok: bool
    models: tuple[ModelInfo, ...] = ()
    version: str | None = None
    error: str | None = None
    # Free-form, bounded state for health (for example a model's load state).
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdapterLimits:
    """Connection, deadline and batching limits taken from performance-config."""

    max_connections: int = 32
    max_keepalive_connections: int = 16
    keepalive_expiry_s: float = 30.0
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 60.0
    probe_deadline_s: float = 2.0
    batch_limit: int = 256
    http2: bool = False
    # Upstream bounds: the largest answer read (a larger one is refused while it arrives) and the widest vector.
    max_response_bytes: int = 32 << 20
    max_dimensions: int = 65_536


T = TypeVar("T")


class CacheStore(Protocol):
    """Small files an adapter keeps between runs, by plain name; the server decides where and how.

    The server's store writes whole files only, private to the user, and hands `parse` only bytes it
    trusts; a file that is missing, untrusted, or that `parse` rejects (ValueError, TypeError, KeyError)
    reads as None and is reported once. Both calls block: adapters run them in a worker thread.
    """

    def load(self, name: str, parse: Callable[[bytes], T]) -> T | None: ...

    def save(self, name: str, data: bytes) -> None: ...


class NoCache:
    """A store that keeps nothing: every load misses (for contexts built without a cache folder)."""

    def load(self, name: str, parse: Callable[[bytes], T]) -> T | None:
        return None

    def save(self, name: str, data: bytes) -> None:
        return None


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """Everything an adapter needs from the outside, resolved by server/config.py.

    Adapters never read the environment or config files themselves.
    """

    limits: AdapterLimits = AdapterLimits()
    cache_dir: Path = Path(".")
    models_dir: Path = Path(".")
    secrets: Mapping[str, SecretStr] = field(default_factory=dict)
    cache: CacheStore = field(default_factory=NoCache)


@runtime_checkable
class Adapter(Protocol):
    info: AdapterInfo

    async def probe(self) -> ProbeResult: ...

    async def chat(self, req: ChatRequest) -> ChatResult: ...

    async def embed(self, req: EmbedRequest) -> EmbedResult: ...

    async def rerank(self, req: RerankRequest) -> RerankResult: ...

    async def aclose(self) -> None: ...
