"""The remote-MCP adapter's tool catalog: a disk cache of the downstream tool list.

The cache lets discovery answer without starting the downstream (a stdio
server is a process spawn), and it remembers, per capability, the hash of the
input schema the mapping was accepted with, so a downstream that changes a
mapped tool is caught even across restarts.

The file is kept through the context's `CacheStore` (the server's keeps it
private and writes it whole) and read back through a schema: a file of another
format or shape is no catalog, which only costs a fresh listing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

from adapters.base import CacheStore
from adapters.errors import AdapterError, CapabilityError
from adapters.manifest import MCPToolMapping
from adapters.types import Capability

_FORMAT = 1
# the store bounds the file's size; the schema bounds the counts
_MAX_TOOLS = 10_000
_MAX_PROPERTIES = 1_000


def schema_hash(schema: Mapping[str, Any]) -> str:
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def mapping_fingerprint(mapping: MCPToolMapping) -> str:
    return hashlib.sha256(mapping.model_dump_json(exclude={"schema_sha256"}).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ToolEntry:
    name: str
    sha256: str
    properties: tuple[str, ...]

    @classmethod
    def from_schema(cls, name: str, schema: Mapping[str, Any]) -> ToolEntry:
        props = schema.get("properties")
        names = tuple(sorted(props)) if isinstance(props, Mapping) else ()
        return cls(name=name, sha256=schema_hash(schema), properties=names)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The schema a capability mapping was accepted with (trust on first use, or a manifest pin)."""

    tool: str
    sha256: str
    mapping: str


@dataclass(frozen=True, slots=True)
class Binding:
    tool: str
    arguments: Mapping[str, str]
    result: str | None


@dataclass(frozen=True, slots=True)
class Catalog:
    tools: Mapping[str, ToolEntry]
    listed_at: float
    ttl_s: float
    accepted: Mapping[str, Accepted] = field(default_factory=dict)

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.listed_at < self.ttl_s

    def accept(self, capability: Capability, mapping: MCPToolMapping) -> Catalog:
        """Record the current schema of a mapped tool as accepted when there is no valid baseline yet."""
        entry = self.tools.get(mapping.tool)
        fingerprint = mapping_fingerprint(mapping)
        current = self.accepted.get(capability)
        if entry is None or (current is not None and current.mapping == fingerprint and current.tool == entry.name):
            return self
        accepted = dict(self.accepted)
        accepted[capability] = Accepted(tool=entry.name, sha256=entry.sha256, mapping=fingerprint)
        return replace(self, accepted=accepted)

    def problem(self, capability: Capability, mapping: MCPToolMapping, adapter: str) -> AdapterError | None:
        """Why the mapping cannot be used now, or None when it can."""
        entry = self.tools.get(mapping.tool)
        if entry is None:
            return CapabilityError(f"{adapter}: the downstream server has no tool '{mapping.tool}' for {capability}")
        baseline = mapping.schema_sha256
        if baseline is None and (accepted := self.accepted.get(capability)) is not None:
            baseline = accepted.sha256
        if baseline is not None and baseline != entry.sha256:
            return AdapterError(
                f"{adapter}: downstream tool '{mapping.tool}' changed its input schema (now sha256 "
                f"{entry.sha256[:12]}…), so the {capability} mapping is disabled; check the adapter manifest's "
                f"tools.{capability} mapping, then pin schema_sha256 or clear the tool cache",
                retryable=False,
            )
        return None


def catalog_from_listing(
    tools: Iterable[tuple[str, Mapping[str, Any]]], ttl_s: float, previous: Catalog | None
) -> Catalog:
    entries = {name: ToolEntry.from_schema(name, schema) for name, schema in tools}
    accepted = previous.accepted if previous is not None else {}
    return Catalog(tools=entries, listed_at=time.time(), ttl_s=ttl_s, accepted=accepted)


async def load_catalog(store: CacheStore, name: str) -> Catalog | None:
    """The cached catalog; None when there is none the store trusts or it does not match the schema."""
    return await anyio.to_thread.run_sync(store.load, name, parse_catalog)


async def save_catalog(store: CacheStore, name: str, catalog: Catalog) -> None:
    await anyio.to_thread.run_sync(store.save, name, catalog_bytes(catalog))


class _ToolJSON(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    properties: list[str] = Field(max_length=_MAX_PROPERTIES)


class _AcceptedJSON(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tool: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mapping: str = Field(pattern=r"^[0-9a-f]{64}$")


class _CatalogJSON(BaseModel):
    """The file's schema: anything else (another format, another shape, odd numbers) is not a catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal[1]
    listed_at: float = Field(allow_inf_nan=False)
    ttl_s: float = Field(ge=0, allow_inf_nan=False)
    tools: list[_ToolJSON] = Field(max_length=_MAX_TOOLS)
    accepted: dict[Capability, _AcceptedJSON]


def parse_catalog(data: bytes) -> Catalog:
    """Bytes of the cache file -> Catalog; ValueError (pydantic's ValidationError) when they are not one."""
    raw = _CatalogJSON.model_validate_json(data)
    tools = {t.name: ToolEntry(name=t.name, sha256=t.sha256, properties=tuple(t.properties)) for t in raw.tools}
    accepted: dict[str, Accepted] = {
        cap: Accepted(tool=a.tool, sha256=a.sha256, mapping=a.mapping) for cap, a in raw.accepted.items()
    }
    return Catalog(tools=tools, listed_at=raw.listed_at, ttl_s=raw.ttl_s, accepted=accepted)


def catalog_bytes(catalog: Catalog) -> bytes:
    payload = {
        "format": _FORMAT,
        "listed_at": catalog.listed_at,
        "ttl_s": catalog.ttl_s,
        "tools": [
            {"name": t.name, "sha256": t.sha256, "properties": list(t.properties)} for t in catalog.tools.values()
        ],
        "accepted": {
            cap: {"tool": a.tool, "sha256": a.sha256, "mapping": a.mapping} for cap, a in catalog.accepted.items()
        },
    }
    return json.dumps(payload, indent=1).encode()
