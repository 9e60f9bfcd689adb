"""The real `model-gateway serve` process, driven by real MCP clients over every transport."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from tests.support.processes import ROOT, gateway_argv, gateway_env, http_gateway, stdio_params

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


async def exercise(client: Client) -> None:
    names = {t.name for t in (await client.list_tools()).tools}
    assert {"chat", "embed", "rerank", "models"} <= names
    emb = await client.call_tool("embed", {"input": ["the cat sat", "a dog ran"]})
    assert not emb.is_error, emb.content
    assert emb.structured_content["count"] == 2 and emb.structured_content["dimensions"] == 384
    rr = await client.call_tool(
        "rerank", {"query": "cat on the mat", "documents": ["stock prices", "the cat sat on the mat"]}
    )
    assert not rr.is_error and rr.structured_content["results"][0]["index"] == 1
    ch = await client.call_tool("chat", {"messages": [{"role": "user", "content": "hello gateway"}], "max_tokens": 8})
    assert not ch.is_error and ch.structured_content["message"]["content"]
    bad = await client.call_tool("embed", {"input": ["x"], "model": "no-such-model"})
    assert bad.is_error and "no-such-model" in bad.content[0].text


async def test_stdio_serves_all_three_tools_to_a_real_client(tmp_path: Path, manifests: Path) -> None:
    with anyio.fail_after(60):
        async with Client(stdio_params(tmp_path, manifests)) as client:
            await exercise(client)


async def test_streamable_http_serves_all_three_tools_with_health_and_metrics(tmp_path: Path, manifests: Path) -> None:
    with http_gateway(tmp_path, manifests, "streamable-http") as base:
        with anyio.fail_after(60):
            async with Client(base + "/mcp") as client:
                await exercise(client)
        health = json.loads(await anyio.to_thread.run_sync(fetch, base + "/health"))
        metrics = await anyio.to_thread.run_sync(fetch, base + "/metrics")
    assert health["adapters"]["ollama"]["status"] == "up"
    assert 'model_gateway_tool_calls_total{outcome="ok",tool="embed"}' in metrics


async def test_stateless_streamable_http_serves_calls(tmp_path: Path, manifests: Path) -> None:
    with http_gateway(tmp_path, manifests, "streamable-http", "--stateless") as base:
        with anyio.fail_after(60):
            async with Client(base + "/mcp") as client:
                await exercise(client)


async def test_legacy_sse_serves_all_three_tools(tmp_path: Path, manifests: Path) -> None:
    with http_gateway(tmp_path, manifests, "sse") as base:
        with anyio.fail_after(60):
            async with Client(sse_client(base + "/sse")) as client:
                await exercise(client)


def _rpc(proc: subprocess.Popen[bytes], msg: dict) -> None:
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(msg) + "\n").encode())
    proc.stdin.flush()


def test_stdout_carries_only_json_rpc_and_the_process_exits_when_stdin_closes(tmp_path: Path, manifests: Path) -> None:
    proc = subprocess.Popen(
        gateway_argv("--manifests", str(manifests)),
        env=gateway_env(tmp_path, {"MODEL_GATEWAY_LOG_LEVEL": "DEBUG"}),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _rpc(
        proc,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
    )
    _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    _rpc(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    _rpc(
        proc,
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "embed", "arguments": {"input": "x"}}},
    )
    _rpc(
        proc,
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "embed", "arguments": {"input": 7}}},
    )
    assert proc.stdin is not None and proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(4)]
    proc.stdin.close()
    rc = proc.wait(timeout=30)
    rest = proc.stdout.read()
    messages = [json.loads(line) for line in [*lines, *rest.splitlines()] if line.strip()]
    assert all(m.get("jsonrpc") == "2.0" for m in messages)
    by_id = {m["id"]: m for m in messages if "id" in m}
    assert by_id[3]["result"]["structuredContent"]["count"] == 1
    assert by_id[4]["result"]["isError"] is True
    assert rc == 0
    assert proc.stderr is not None and proc.stderr.read()  # logs went to stderr


def test_binding_a_public_address_without_token_and_hosts_refuses_to_start(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--transport", "streamable-http", "--host", "0.0.0.0"],
        env=gateway_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--allowed-host" in out.stderr and "MODEL_GATEWAY_AUTH_TOKEN" in out.stderr
    assert "Traceback" not in out.stderr


def test_discover_prints_each_adapter_with_status_and_models(tmp_path: Path, manifests: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server", "discover", "--json", "--manifests", str(manifests)],
        env=gateway_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    ollama = data["adapters"]["ollama"]
    assert ollama["status"] == "up" and ollama["latency_ms"] > 0
    assert "all-minilm:latest" in {m["name"] for m in ollama["models"]}


async def test_stdio_serves_metrics_and_health_on_the_metrics_port(tmp_path: Path, manifests: Path) -> None:
    from tests.support.processes import free_port, wait_http

    port = free_port()
    with anyio.fail_after(60):
        async with Client(stdio_params(tmp_path, manifests, "--metrics-port", str(port))) as client:
            await client.call_tool("embed", {"input": ["x"]})
            base = f"http://127.0.0.1:{port}"
            await anyio.to_thread.run_sync(wait_http, base + "/health")
            metrics = await anyio.to_thread.run_sync(fetch, base + "/metrics")
            health = json.loads(await anyio.to_thread.run_sync(fetch, base + "/health"))
    assert 'model_gateway_tool_calls_total{outcome="ok",tool="embed"} 1.0' in metrics
    assert health["adapters"]["ollama"]["status"] == "up"
