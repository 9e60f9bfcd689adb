"""A remote-MCP adapter with no `models` learns them from the downstream, so the README's minimal manifest serves."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from mcp import Client

from adapters.base import AdapterContext
from adapters.manifest import MCPManifest
from adapters.mcp_remote import MCPRemoteAdapter
from adapters.types import ChatMessage, ChatRequest, EmbedRequest
from server.app import build_server
from server.config import load_settings
from tests.support.downstream_mcp import LISTED_MODELS, toy_vector
from tests.support.fake_ollama import spawn
from tests.support.gateway import disabled_adapter
from tests.support.processes import ROOT, gateway_env, ollama_manifests

pytestmark = pytest.mark.anyio
DOWNSTREAM = str(ROOT / "tests" / "support" / "downstream_mcp.py")


def minimal(command: list[str], **extra: Any) -> dict[str, Any]:
    """The README's minimal remote-MCP manifest: a name, the kind and a command."""
    return {"name": "gw2", "kind": "mcp", "command": command, **extra}


def front(root: Path, gw2: dict[str, Any]) -> Path:
    (root / "adapters").mkdir(parents=True)
    (root / "adapters" / "gw2.json").write_text(json.dumps(gw2))
    (root / "adapters" / "mlx.json").write_text(json.dumps(disabled_adapter("mlx")))
    (root / "routes.json").write_text(json.dumps({"routes": {c: ["gw2"] for c in ("embed", "rerank", "chat")}}))
    return root


async def call_everything(tmp_path: Path, manifests: Path) -> dict[str, Any]:
    settings = load_settings(manifests_dir=manifests, env={"HOME": str(tmp_path), "MODEL_GATEWAY_AUDIT_KEY": "33" * 32})
    with anyio.fail_after(90):
        async with Client(build_server(settings)) as client:
            emb = await client.call_tool("embed", {"input": ["a cat", "a dog"]})
            assert not emb.is_error, emb.content
            rr = await client.call_tool("rerank", {"query": "cat", "documents": ["stocks", "a cat sat"]})
            assert not rr.is_error and rr.structured_content["results"][0]["index"] == 1, rr.content
            ch = await client.call_tool("chat", {"messages": [{"role": "user", "content": "hi there"}]})
            assert not ch.is_error and ch.structured_content["message"]["content"], ch.content
            listed = await client.call_tool("models", {})
    return {"embed": emb.structured_content, "models": listed.structured_content}


async def test_the_readme_minimal_manifest_serves_every_capability_through_the_gateway(tmp_path: Path) -> None:
    manifests = front(tmp_path / "manifests", minimal([sys.executable, DOWNSTREAM]))
    seen = await call_everything(tmp_path, manifests)
    assert seen["embed"]["adapter"] == "gw2" and seen["embed"]["count"] == 2
    names = {m["name"] for m in seen["models"]["models"]}
    assert {"gw2/embed", "gw2/rerank", "gw2/chat"} <= names


async def test_the_minimal_manifest_serves_through_a_real_downstream_gateway(tmp_path: Path) -> None:
    with spawn() as ollama_url:
        down = ollama_manifests(tmp_path / "down-manifests", ollama_url)
        command = [sys.executable, "-m", "server", "serve", "--manifests", str(down)]
        gw2 = minimal(command, env=gateway_env(tmp_path / "down"), cwd=str(ROOT))
        seen = await call_everything(tmp_path / "front", front(tmp_path / "manifests", gw2))
    assert seen["embed"]["adapter"] == "gw2" and seen["embed"]["dimensions"] == 384


def adapter_for(tmp_path: Path, tasks: TaskGroup, **env: str) -> MCPRemoteAdapter:
    manifest = MCPManifest.model_validate(minimal([sys.executable, DOWNSTREAM], env=env))
    return MCPRemoteAdapter(manifest, AdapterContext(cache_dir=tmp_path / "cache", tasks=tasks))


async def test_models_are_named_after_the_tools_until_a_session_lists_the_downstream_s_models(
    tmp_path: Path, tasks: TaskGroup
) -> None:
    adapter = adapter_for(tmp_path, tasks)
    before = await adapter.probe()
    assert before.ok and {m.name: set(m.capabilities) for m in before.models} == {
        "chat": {"chat"},
        "embed": {"embed"},
        "rerank": {"rerank"},
    }
    with anyio.fail_after(60):
        await adapter.embed(EmbedRequest(model="embed", texts=("a",)))
    after = await adapter.probe()
    learned = {m.name: set(m.capabilities) for m in after.models}
    assert {name: set(caps) for name, caps in LISTED_MODELS}.items() <= learned.items()
    assert "3 listed" in after.details["models"]
    await adapter.aclose()


async def test_a_tool_named_model_leaves_the_model_choice_to_the_downstream(tmp_path: Path, tasks: TaskGroup) -> None:
    adapter = adapter_for(tmp_path, tasks)
    with anyio.fail_after(60):
        chat = await adapter.chat(ChatRequest(model="chat", messages=(ChatMessage("user", "x"),)))
        named = await adapter.chat(ChatRequest(model="toy/toy-chat", messages=(ChatMessage("user", "x"),)))
    assert chat.content == named.content == "echo: x"
    await adapter.aclose()


async def test_a_downstream_without_a_models_tool_is_served_by_its_tool_names(tmp_path: Path, tasks: TaskGroup) -> None:
    adapter = adapter_for(tmp_path, tasks, DOWNSTREAM_MODELS="0")
    with anyio.fail_after(60):
        result = await adapter.embed(EmbedRequest(model="embed", texts=("a", "b")))
    assert [list(v) for v in result.vectors] == [toy_vector("a"), toy_vector("b")]
    probe = await adapter.probe()
    assert probe.ok and sorted(m.name for m in probe.models) == ["chat", "embed", "rerank"]
    await adapter.aclose()
