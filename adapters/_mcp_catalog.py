"""The remote-MCP adapter's tool catalog: a disk cache of the downstream tool list.

The cache lets discovery answer without starting the downstream (a stdio
server is a process spawn), and it remembers, per capability, the hash of the
input schema the mapping was accepted with, so a downstream that changes a
mapped tool is caught even across restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio.to_thread

from adapters.errors import AdapterError, CapabilityError
from adapters.manifest import MCPToolMapping
from adapters.types import Capability

_FORMAT = 1


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


async def load_catalog(path: Path) -> Catalog | None:
    return await anyio.to_thread.run_sync(_load, path)


async def save_catalog(path: Path, catalog: Catalog) -> None:
    await anyio.to_thread.run_sync(_save, path, catalog)


def _load(path: Path) -> Catalog | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != _FORMAT:
            return None
        tools = {
            t["name"]: ToolEntry(name=t["name"], sha256=t["sha256"], properties=tuple(t["properties"]))
            for t in raw["tools"]
        }
        accepted = {cap: Accepted(**a) for cap, a in raw["accepted"].items()}
        return Catalog(tools=tools, listed_at=float(raw["listed_at"]), ttl_s=float(raw["ttl_s"]), accepted=accepted)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # A missing or damaged cache only costs a fresh listing.
        return None


def _save(path: Path, catalog: Catalog) -> None:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, path)
