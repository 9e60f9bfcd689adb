"""A gateway in front of a gateway (remote-MCP adapter), and privacy mode keeping traffic on loopback."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from server.app import build_server
from server.config import ServeOptions, load_settings
from tests.support.gateway import disabled_adapter
from tests.support.processes import ROOT, gateway_env, http_gateway, ollama_manifests

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
MODELS = [
    {"name": "all-minilm:latest", "capabilities": ["embed", "rerank"]},
    {"name": "llama3.2:1b", "capabilities": ["chat"]},
]


def front_manifests(root: Path, downstream: dict[str, Any]) -> Path:
    (root / "adapters").mkdir(parents=True, exist_ok=True)
    (root / "adapters" / "down.json").write_text(
        json.dumps({"name": "down", "kind": "mcp", "models": MODELS, **downstream})
    )
    (root / "adapters" / "mlx.json").write_text(json.dumps(disabled_adapter("mlx")))
    (root / "routes.json").write_text(
        json.dumps(
            {
                "routes": {
                    "embed": ["down/all-minilm:latest"],
                    "rerank": ["down/all-minilm:latest"],
                    "chat": ["down/llama3.2:1b"],
                }
            }
        )
    )
    return root


async def drive_front(tmp_path: Path, manifests: Path) -> None:
    settings = load_settings(
        manifests_dir=manifests, env={"HOME": str(tmp_path / "front"), "MODEL_GATEWAY_AUDIT_KEY": "22" * 32}
    )
    with anyio.fail_after(90):
        async with Client(build_server(settings)) as client:
            emb = await client.call_tool("embed", {"input": ["a cat", "a dog"]})
            assert not emb.is_error, emb.content
            assert emb.structured_content["adapter"] == "down" and emb.structured_content["count"] == 2
            rr = await client.call_tool("rerank", {"query": "cat", "documents": ["stocks", "a cat sat"]})
            assert not rr.is_error and rr.structured_content["results"][0]["index"] == 1
            ch = await client.call_tool("chat", {"messages": [{"role": "user", "content": "hi there"}]})
            assert not ch.is_error and ch.structured_content["message"]["content"]


async def test_a_gateway_serves_through_a_downstream_gateway_over_stdio(tmp_path: Path, ollama_url: str) -> None:
    down = ollama_manifests(tmp_path / "down-manifests", ollama_url)
    env = gateway_env(tmp_path / "down")
    command = [sys.executable, "-m", "server", "serve", "--manifests", str(down)]
    front = front_manifests(tmp_path / "front-manifests", {"command": command, "env": env, "cwd": str(ROOT)})
    await drive_front(tmp_path, front)


async def test_a_gateway_serves_through_a_downstream_gateway_over_streamable_http(
    tmp_path: Path, ollama_url: str
) -> None:
    down = ollama_manifests(tmp_path / "down-manifests", ollama_url)
    with http_gateway(tmp_path / "down", down, "streamable-http") as base:
        front = front_manifests(tmp_path / "front-manifests", {"url": base + "/mcp"})
        await drive_front(tmp_path, front)


_connects: list[Any] = []
_watching = False


def _audit_connect(event: str, args: tuple[Any, ...]) -> None:
    if _watching and event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else str(address)
        _connects.append(host)
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConnectionRefusedError(f"test blocked a connection to {host}")


sys.addaudithook(_audit_connect)


async def test_privacy_mode_keeps_every_connection_on_loopback(tmp_path: Path, ollama_url: str) -> None:
    global _watching
    manifests = ollama_manifests(tmp_path / "manifests", ollama_url)
    (manifests / "adapters" / "cloud.json").write_text(
        json.dumps(
            {
                "name": "cloud",
                "kind": "openai",
                "endpoint": "https://api.openai.com",
                "api_key_env": "CLOUD_KEY",
                "models": [{"name": "text-embedding-3-small", "capabilities": ["embed"]}],
            }
        )
    )
    (manifests / "policy.json").write_text(json.dumps({"default_remote": "allow"}))
    (manifests / "routes.json").write_text(
        json.dumps({"routes": {"embed": ["cloud/text-embedding-3-small", "ollama/all-minilm:latest"]}})
    )
    env = {"HOME": str(tmp_path), "MODEL_GATEWAY_AUDIT_KEY": "33" * 32, "CLOUD_KEY": "sk-test-not-real"}
    settings = load_settings(manifests_dir=manifests, serve=ServeOptions(privacy_mode=True), env=env)
    _connects.clear()
    _watching = True
    try:
        with anyio.fail_after(60):
            async with Client(build_server(settings)) as client:
                ok = await client.call_tool("embed", {"input": ["private text"]})
                refused = await client.call_tool("embed", {"input": ["x"], "model": "cloud/text-embedding-3-small"})
                health = json.loads((await client.read_resource("gateway://health")).contents[0].text)
    finally:
        _watching = False
    assert not ok.is_error and ok.structured_content["adapter"] == "ollama"
    assert [r["error"] for r in ok.structured_content["route"] if r["adapter"] == "cloud"] == [
        "excluded by privacy mode"
    ]
    assert refused.is_error and "privacy mode" in refused.content[0].text
    assert health["privacy_mode"] is True
    assert _connects and all(h in ("127.0.0.1", "localhost", "::1") for h in _connects)
