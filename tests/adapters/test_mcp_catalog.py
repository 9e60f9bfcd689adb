"""The remote-MCP tool catalog cache: kept through the context's store, read back only through its schema."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from anyio.abc import TaskGroup

from adapters._mcp_catalog import (
    Accepted,
    Catalog,
    ToolEntry,
    catalog_bytes,
    load_catalog,
    parse_catalog,
    save_catalog,
)
from adapters.base import AdapterContext, NoCache
from adapters.manifest import MCPManifest
from adapters.mcp_remote import MCPRemoteAdapter
from adapters.types import EmbedRequest
from server.statefile import CacheFolder

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
SHA = "a" * 64


def sample() -> Catalog:
    tools = {"embed": ToolEntry("embed", SHA, ("input", "model"))}
    return Catalog(tools=tools, listed_at=1000.0, ttl_s=60.0, accepted={"embed": Accepted("embed", SHA, "b" * 64)})


class MemoryStore:
    """A CacheStore that keeps bytes in a dict and counts what it was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def load(self, name: str, parse: Callable[[bytes], T]) -> T | None:
        data = self.files.get(name)
        return None if data is None else parse(data)

    def save(self, name: str, data: bytes) -> None:
        self.files[name] = data


def test_a_catalog_round_trips_through_its_file_format() -> None:
    assert parse_catalog(catalog_bytes(sample())) == sample()


WRONG = {
    "a list": b"[]",
    "null": b"null",
    "another format": json.dumps({**json.loads(catalog_bytes(sample())), "format": 2}).encode(),
    "tools as an object": json.dumps({**json.loads(catalog_bytes(sample())), "tools": {}}).encode(),
    "a hash that is not one": catalog_bytes(sample()).replace(SHA.encode(), b"zz"),
    "an unknown capability": catalog_bytes(sample()).replace(b'"embed": {', b'"paint": {'),
    "an extra field": json.dumps({**json.loads(catalog_bytes(sample())), "served": True}).encode(),
    "an infinite ttl": catalog_bytes(sample()).replace(b'"ttl_s": 60.0', b'"ttl_s": 1e999'),
    "truncated": catalog_bytes(sample())[:40],
}


@pytest.mark.parametrize("name", list(WRONG))
def test_anything_but_a_catalog_is_refused_by_the_schema(name: str) -> None:
    with pytest.raises(ValueError):
        parse_catalog(WRONG[name])


async def test_the_catalog_goes_through_the_store_it_is_given() -> None:
    store = MemoryStore()
    assert await load_catalog(store, "mcp-tools-x.json") is None
    await save_catalog(store, "mcp-tools-x.json", sample())
    assert await load_catalog(store, "mcp-tools-x.json") == sample()
    assert await load_catalog(NoCache(), "mcp-tools-x.json") is None


async def test_a_damaged_cache_file_costs_a_fresh_listing_and_is_rewritten_private(
    tmp_path: Path, tasks: TaskGroup
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / "mcp-tools-downstream.json"
    target.write_bytes(b'{"format": 1, "tools": "not a list"}')
    os.chmod(target, 0o666)
    manifest = MCPManifest.model_validate(
        {
            "kind": "mcp",
            "name": "downstream",
            "command": [sys.executable, "-m", "tests.support.downstream_mcp"],
            "cwd": str(ROOT),
            "env": {"PYTHONPATH": str(ROOT)},
            "tools": {"embed": {"tool": "embed", "arguments": {"input": "input", "model": "model"}}},
        }
    )
    adapter = MCPRemoteAdapter(manifest, AdapterContext(cache_dir=cache, cache=CacheFolder(cache), tasks=tasks))
    probe = await adapter.probe()
    assert probe.details.get("source") != "cache"  # the damaged file was not taken for a listing
    with anyio.fail_after(60):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    await adapter.aclose()
    rewritten: dict[str, Any] = json.loads(target.read_bytes())
    assert {t["name"] for t in rewritten["tools"]} >= {"embed"}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert parse_catalog(target.read_bytes()).tools["embed"].name == "embed"
