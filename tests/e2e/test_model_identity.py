"""One model, many spellings: routing, policy, audit and the models listing see the canonical name.

Ollama names a model case-insensitively, with an optional default registry and
namespace and a default tag; a deny on one spelling must hold for all of them,
and the backend must be sent the one name it knows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from server.app import build_server
from server.config import load_settings
from tests.support.fake_ollama import remote_counts, remote_reset
from tests.support.processes import ollama_manifests

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
SPELLINGS = (
    "ollama/llama3.2:1b",
    "ollama/LLAMA3.2:1B",
    "Llama3.2:1b",
    "library/llama3.2:1b",
    "registry.ollama.ai/library/llama3.2:1b",
    "ollama/registry.ollama.ai/library/LLAMA3.2:1b",
)


def _settings(tmp_path: Path, ollama_url: str, rules: list[dict[str, Any]]) -> Any:
    manifests = ollama_manifests(tmp_path / "manifests", ollama_url)
    (manifests / "policy.json").write_text(json.dumps({"rules": rules}))
    env = {"HOME": str(tmp_path), "MODEL_GATEWAY_AUDIT_KEY": "33" * 32}
    return load_settings(manifests_dir=manifests, env=env)


def _audit(settings: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in settings.audit_path.read_text().splitlines()]


async def test_a_model_deny_holds_for_every_spelling_of_the_model(tmp_path: Path, ollama_url: str) -> None:
    rules = [{"id": "no-llama", "effect": "deny", "match": {"model": ["LLAMA3.2:1b"]}, "reason": "not here"}]
    settings = _settings(tmp_path, ollama_url, rules)
    remote_reset(ollama_url)
    with anyio.fail_after(60):
        async with Client(build_server(settings)) as client:
            for spelling in SPELLINGS:
                r = await client.call_tool("chat", {"model": spelling, "messages": [{"role": "user", "content": "hi"}]})
                assert r.is_error, f"{spelling!r} reached the denied model"
                assert "no-llama" in r.content[0].text, r.content[0].text  # type: ignore[union-attr]
    assert remote_counts(ollama_url).get("/api/chat", 0) == 0
    denials = [r for r in _audit(settings) if r.get("decision") == "deny"]
    assert len(denials) == len(SPELLINGS) and {d["rule"] for d in denials} == {"rule:no-llama"}


async def test_every_spelling_routes_to_one_canonical_model_and_the_backend_gets_its_own_name(
    tmp_path: Path, ollama_url: str
) -> None:
    settings = _settings(tmp_path, ollama_url, [])
    with anyio.fail_after(60):
        async with Client(build_server(settings)) as client:
            for spelling in ("ALL-MINILM", "ollama/library/all-minilm", "registry.ollama.ai/library/All-MiniLM:latest"):
                r = await client.call_tool("embed", {"model": spelling, "input": ["a cat"]})
                assert not r.is_error, (spelling, r.content)
                route = r.structured_content["route"]  # type: ignore[index]
                assert [(a["adapter"], a["model"]) for a in route] == [("ollama", "all-minilm:latest")]
            listed = await client.call_tool("models", {})
            names = [m["name"] for m in listed.structured_content["models"]]  # type: ignore[index]
            assert "ollama/all-minilm:latest" in names and "ollama/llama3.2:1b" in names
    starts = [r for r in _audit(settings) if r.get("event") == "start"]
    assert {tuple(r["candidates"]) for r in starts} == {("ollama/all-minilm:latest",)}
