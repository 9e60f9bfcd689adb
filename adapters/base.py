"""The adapter seam: one Protocol every backend implements.

A backend is one module in adapters/ plus a manifest kind; the router and the
pipeline only ever see this Protocol. Most kinds build on the kit (adapters/kit.py).
Model identity is not part of the Protocol: `adapters.naming.canonical_model(adapter,
name)` asks the adapter when it has a rule and keeps the name as given otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from contextvars import Context
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar, runtime_checkable

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
    # Models the manifest declares that the server did not list: health marks each one failed.
    unlisted: tuple[str, ...] = ()


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
    model_load_s: float = 60.0  # how long a call waits for a local model to finish loading
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


class TaskOwner(Protocol):
    """Runs work that outlives the call that started it (a downstream session's owner task).

    The server passes the task group of the application state (an anyio TaskGroup is a TaskOwner), so
    what an adapter starts is cancelled when the state closes and no adapter keeps tasks of its own.
    Raises RuntimeError, having closed `coro`, when nothing owns tasks (not open yet, or closed).
    """

    def create_task(
        self, coro: Coroutine[object, object, None], *, name: object = None, context: Context | None = None
    ) -> object: ...


class NoTaskOwner:
    """The owner of contexts built without a task group: every start is refused."""

    def create_task(
        self, coro: Coroutine[object, object, None], *, name: object = None, context: Context | None = None
    ) -> object:
        coro.close()
        raise RuntimeError("no task group owns background work in this adapter context")


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """Everything an adapter needs from the outside, resolved by server/config.py.

    Adapters never read the environment or config files themselves. `tasks` is filled by
    server/state.py with the state's task group.
    """

    limits: AdapterLimits = AdapterLimits()
    cache_dir: Path = Path(".")
    models_dir: Path = Path(".")
    secrets: Mapping[str, SecretStr] = field(default_factory=dict)
    cache: CacheStore = field(default_factory=NoCache)
    tasks: TaskOwner = field(default_factory=NoTaskOwner)


@runtime_checkable
class Adapter(Protocol):
    info: AdapterInfo

    async def probe(self) -> ProbeResult: ...

    async def chat(self, req: ChatRequest) -> ChatResult: ...

    async def embed(self, req: EmbedRequest) -> EmbedResult: ...

    async def rerank(self, req: RerankRequest) -> RerankResult: ...

    async def aclose(self) -> None: ...


ModelState = Literal["unloaded", "loading", "ready", "failed"]


@runtime_checkable
class ReportsModelStates(Protocol):
    """An adapter that holds models itself and can say, now, where each one is.

    Health reads this on every request, so it must be cheap and must not wait on the backend.
    Adapters whose models live on a server report nothing here; health derives their state
    from the last probe.
    """

    def model_states(self) -> Mapping[str, tuple[ModelState, str | None]]: ...
