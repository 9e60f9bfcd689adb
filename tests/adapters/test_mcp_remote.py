from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from pydantic import ValidationError

from adapters.base import AdapterContext
from adapters.errors import AdapterError, AdapterUnavailableError, CapabilityError
from adapters.manifest import MCPManifest
from adapters.mcp_remote import MCPRemoteAdapter
from adapters.types import ChatMessage, ChatRequest, EmbedRequest, RerankRequest
from server.statefile import CacheFolder
from tests.support.contract import check_contract
from tests.support.downstream_mcp import alive, toy_vector
from tests.support.downstream_mcp import spawned as spawned_pids

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.anyio

EMBED = {"tool": "embed", "arguments": {"input": "input", "model": "model"}}
RERANK = {"tool": "rerank", "arguments": {"query": "query", "documents": "documents", "top_n": "top_n"}}


def manifest(tmp_path: Path, *, tools: dict[str, Any] | None = None, **env: str) -> MCPManifest:
    return MCPManifest.model_validate(
        {
            "kind": "mcp",
            "name": "downstream",
            "command": [sys.executable, "-m", "tests.support.downstream_mcp"],
            "cwd": str(ROOT),
            "env": {"PYTHONPATH": str(ROOT), "DOWNSTREAM_SPAWN_LOG": str(tmp_path / "spawns"), **env},
            "tools": tools if tools is not None else {},
        }
    )


def make(tmp_path: Path, tasks: TaskGroup, *, tools: dict[str, Any] | None = None, **env: str) -> MCPRemoteAdapter:
    context = AdapterContext(cache_dir=tmp_path / "cache", cache=CacheFolder(tmp_path / "cache"), tasks=tasks)
    return MCPRemoteAdapter(manifest(tmp_path, tools=tools, **env), context)


def spawned(tmp_path: Path) -> list[int]:
    return spawned_pids(tmp_path / "spawns")


async def test_no_process_starts_until_the_first_call_and_one_session_serves_many(
    tmp_path: Path, tasks: TaskGroup
) -> None:
    adapter = make(tmp_path, tasks)
    assert adapter.info.capabilities == {"chat", "embed", "rerank"}
    probe = await adapter.probe()  # discovery must not open the session either
    assert probe.ok and "not opened" in probe.details["session"]
    assert spawned(tmp_path) == []
    texts = [f"text {i}" for i in range(8)]
    results: dict[str, list[float]] = {}

    async def one(text: str) -> None:
        result = await adapter.embed(EmbedRequest(model="toy-embed", texts=(text,)))
        results[text] = list(result.vectors[0])

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for text in texts:
                tg.start_soon(one, text)
        for _ in range(5):
            await adapter.rerank(RerankRequest(model="toy-rerank", query="text", documents=("a", "text")))
    assert results == {t: toy_vector(t) for t in texts}
    assert len(spawned(tmp_path)) == 1
    await adapter.aclose()


async def test_the_tool_list_is_cached_on_disk_and_reused_without_a_process(tmp_path: Path, tasks: TaskGroup) -> None:
    first = make(tmp_path, tasks, tools={"embed": EMBED})
    with anyio.fail_after(60):
        await first.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    await first.aclose()
    cache = json.loads((tmp_path / "cache" / "mcp-tools-downstream.json").read_text())
    assert {t["name"] for t in cache["tools"]} >= {"embed", "rerank", "chat"}
    assert set(cache["accepted"]) == {"embed"}

    second = make(tmp_path, tasks, tools={"embed": EMBED})
    probe = await second.probe()
    assert probe.ok and probe.details["source"] == "cache"
    assert len(spawned(tmp_path)) == 1
    await second.aclose()


async def test_a_ttl_hint_from_the_server_sets_how_long_the_cache_stays_fresh(tmp_path: Path, tasks: TaskGroup) -> None:
    first = make(tmp_path, tasks, DOWNSTREAM_TOOLS_TTL_MS="1")
    with anyio.fail_after(60):
        await first.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    await first.aclose()
    cache = json.loads((tmp_path / "cache" / "mcp-tools-downstream.json").read_text())
    assert cache["ttl_s"] == 0.001

    second = make(tmp_path, tasks, DOWNSTREAM_TOOLS_TTL_MS="1")
    stale = await second.probe()  # a stale cache and no session: the probe says so and spawns nothing
    assert stale.ok and "not opened" in stale.details["session"] and len(spawned(tmp_path)) == 1
    with anyio.fail_after(60):
        await second.embed(EmbedRequest(model="toy-embed", texts=("b",)))
        probe = await second.probe()  # with a session open, an expired list is fetched again
    assert probe.ok and probe.details["source"] == "live"
    assert len(spawned(tmp_path)) == 2
    await second.aclose()


async def test_a_changed_tool_schema_disables_that_mapping_until_the_manifest_changes(
    tmp_path: Path, tasks: TaskGroup
) -> None:
    tools = {"embed": EMBED, "rerank": RERANK}
    first = make(tmp_path, tasks, tools=tools)
    with anyio.fail_after(60):
        await first.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    await first.aclose()

    changed = make(tmp_path, tasks, tools=tools, DOWNSTREAM_VARIANT="v2")
    with anyio.fail_after(60), pytest.raises(AdapterError) as caught:
        await changed.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    assert caught.value.retryable is False
    assert "changed its input schema" in str(caught.value) and "manifest" in str(caught.value)
    reranked = await changed.rerank(RerankRequest(model="toy-rerank", query="a", documents=("a", "b")))
    assert reranked.results[0].index == 0
    probe = await changed.probe()
    assert "disabled.embed" in probe.details and "changed its input schema" in (probe.error or "")
    await changed.aclose()

    remapped = {"embed": {"tool": "embed", "arguments": {"texts": "input"}}}
    fixed = make(tmp_path, tasks, tools=remapped, DOWNSTREAM_VARIANT="v2")
    with anyio.fail_after(60):
        result = await fixed.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    assert list(result.vectors[0]) == toy_vector("a")
    await fixed.aclose()


async def test_a_downstream_that_dies_is_unavailable_then_reopened_on_the_next_call(
    tmp_path: Path, tasks: TaskGroup
) -> None:
    adapter = make(tmp_path, tasks, tools={"chat": {"tool": "die"}, "embed": EMBED})
    with anyio.fail_after(60), pytest.raises(AdapterUnavailableError) as caught:
        await adapter.chat(ChatRequest(model="m", messages=(ChatMessage("user", "hi"),)))
    assert caught.value.retryable is True
    with anyio.fail_after(60):
        result = await adapter.embed(EmbedRequest(model="toy-embed", texts=("b",)))
    assert list(result.vectors[0]) == toy_vector("b")
    first, second = spawned(tmp_path)
    assert not alive(first) and alive(second)
    await adapter.aclose()
    await adapter.aclose()
    assert not alive(second)
    with pytest.raises(AdapterUnavailableError):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("b",)))


async def test_the_session_ends_with_the_task_group_that_owns_it_even_if_the_adapter_is_never_closed(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with anyio.create_task_group() as owner:
            adapter = make(tmp_path, owner)
            await adapter.embed(EmbedRequest(model="toy-embed", texts=("a",)))
            (pid,) = spawned(tmp_path)
            assert alive(pid)
            owner.cancel_scope.cancel()
    assert not alive(pid)
    with anyio.fail_after(5):  # the owner task is gone: closing has nothing left to wait for
        await adapter.aclose()


async def test_a_session_that_no_task_group_can_own_is_refused_and_starts_no_process(tmp_path: Path) -> None:
    unowned = MCPRemoteAdapter(manifest(tmp_path), AdapterContext(cache_dir=tmp_path / "cache"))
    with anyio.fail_after(10), pytest.raises(AdapterUnavailableError, match="no running task group"):
        await unowned.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    await unowned.aclose()
    async with anyio.create_task_group() as closed:
        pass
    late = make(tmp_path, closed)  # its owner closed before the first call
    with anyio.fail_after(10), pytest.raises(AdapterUnavailableError, match="no running task group"):
        await late.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    assert spawned(tmp_path) == []
    await late.aclose()


async def test_a_hanging_tool_is_bounded_by_the_callers_deadline(tmp_path: Path, tasks: TaskGroup) -> None:
    adapter = make(tmp_path, tasks, tools={"chat": {"tool": "hang"}, "embed": EMBED})
    with anyio.fail_after(60):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("warm",)))
    with pytest.raises(TimeoutError):
        with anyio.fail_after(1):
            await adapter.chat(ChatRequest(model="m", messages=(ChatMessage("user", "hi"),)))
    with anyio.fail_after(30):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("after",)))
    assert len(spawned(tmp_path)) == 1
    await adapter.aclose()
    assert not any(alive(pid) for pid in spawned(tmp_path))


async def test_an_is_error_result_is_an_adapter_error_retryable_only_when_transient(
    tmp_path: Path, tasks: TaskGroup
) -> None:
    adapter = make(tmp_path, tasks, tools={"rerank": {"tool": "fail", "arguments": {"message": "query"}}})
    with anyio.fail_after(60), pytest.raises(AdapterError) as caught:
        await adapter.rerank(RerankRequest(model="m", query="documents must not be empty", documents=("d",)))
    assert caught.value.retryable is False and "documents must not be empty" in str(caught.value)
    with pytest.raises(AdapterError) as transient:
        await adapter.rerank(RerankRequest(model="m", query="backend temporarily unavailable", documents=("d",)))
    assert transient.value.retryable is True
    with pytest.raises(CapabilityError):
        await adapter.embed(EmbedRequest(model="m", texts=("x",)))
    await adapter.aclose()


async def test_a_downstream_gateway_passes_the_contract_with_the_default_mapping(
    tmp_path: Path, tasks: TaskGroup
) -> None:
    adapter = make(tmp_path, tasks)
    chat = await adapter.chat(ChatRequest(model="toy-chat", messages=(ChatMessage("user", "one two"),)))
    assert chat.content == "echo: one two" and chat.usage.output_tokens == 3
    await check_contract(adapter, {"chat": "toy-chat", "embed": "toy-embed", "rerank": "toy-rerank"})
    assert not any(alive(pid) for pid in spawned(tmp_path))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int) -> None:
    with anyio.fail_after(30):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.1)
                continue
            await stream.aclose()
            return


async def test_a_streamable_http_downstream_is_used_once_it_becomes_reachable(tmp_path: Path, tasks: TaskGroup) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    spec = {"kind": "mcp", "name": "remote", "url": url, "open_timeout_s": 5}
    adapter = MCPRemoteAdapter(MCPManifest.model_validate(spec), AdapterContext(cache_dir=tmp_path, tasks=tasks))
    assert adapter.info.endpoint == url
    with anyio.fail_after(30), pytest.raises(AdapterUnavailableError):
        await adapter.embed(EmbedRequest(model="toy-embed", texts=("a",)))
    cmd = [sys.executable, "-m", "tests.support.downstream_mcp", "--http", "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with await anyio.open_process(cmd, cwd=ROOT, env=env, stdout=None, stderr=None) as proc:
        try:
            await wait_for_port(port)
            with anyio.fail_after(30):
                result = await adapter.embed(EmbedRequest(model="toy-embed", texts=("a", "b")))
            assert [list(v) for v in result.vectors] == [toy_vector("a"), toy_vector("b")]
            await adapter.aclose()
        finally:
            proc.terminate()


def test_a_mapping_to_an_unknown_gateway_field_is_rejected(tmp_path: Path) -> None:
    bad = {"embed": {"tool": "embed", "arguments": {"input": "prompt"}}}
    with pytest.raises(ValidationError, match="unknown gateway field"):
        manifest(tmp_path, tools=bad)
