"""The README's Manifests and Governance examples, read from README.md and run, so the README cannot drift.

Each example block there is preceded by `<!-- example: NAME -->`; every one of them must have a test here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from starlette.types import Receive, Scope, Send

from server.app import build_server
from server.cli import main
from server.config import ServeOptions, load_settings
from server.http_edge import BearerAuth
from server.manifests import load_manifests, shipped_manifests_dir
from server.principal import SCOPE_KEY
from tests.support.fake_ollama import FakeModel, FakeOllama
from tests.support.fakes import FakeAdapter
from tests.support.gateway import settings_for

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("## Manifests\n", "## Governance\n")
EXAMPLE = re.compile(r"<!-- example: ([a-z0-9-]+) -->\n```([a-z]+)\n(.*?)\n```\n", re.S)
FENCE = re.compile(r"^```[a-z]*$", re.M)
USER_DIR = "~/.config/model-gateway/manifests"


def _examples() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for heading in SECTIONS:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        body = text[start : end if end != -1 else len(text)]
        marked = EXAMPLE.findall(body)
        blocks = len(FENCE.findall(body)) // 2
        assert len(marked) == blocks, f"{heading.strip()}: every example needs a `<!-- example: NAME -->` line"
        for name, _, content in marked:
            assert name not in found, f"example {name!r} appears twice"
            found[name] = content
    return found


EXAMPLES = _examples()
RUN: dict[str, Callable[..., Any]] = {}


def runs(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(test: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            RUN[name] = test
        return test

    return mark


def user_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    """A user manifests dir holding README examples byte for byte (under the names the README gives them)."""
    d = tmp_path / "manifests"
    (d / "adapters").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text + "\n", encoding="utf-8")
    return d


def test_every_example_in_the_manifests_and_governance_sections_is_run_here() -> None:
    assert set(EXAMPLES) == set(RUN)
    for name, text in EXAMPLES.items():
        if not name.startswith("explain-"):
            json.loads(text)  # each JSON example parses as it is printed


def _ollama_readme_file(url: str) -> str:
    """The README's Ollama manifest, pointed at the loopback fake instead of port 11434 (nothing else changed)."""
    manifest = json.loads(EXAMPLES["ollama-adapter"])
    assert manifest["endpoint"] == "http://127.0.0.1:11434"
    return json.dumps({**manifest, "endpoint": url})


FAKE_MODELS = (FakeModel("nomic-embed-text:latest", "nomic-bert", True), FakeModel("llama3.2:latest", "llama", False))


@pytest.mark.anyio
@runs("ollama-adapter", "routes")
async def test_the_ollama_adapter_and_routes_examples_serve_calls_through_a_real_server(tmp_path: Path) -> None:
    with FakeOllama(FAKE_MODELS) as fake:
        user_dir(tmp_path, {"adapters/ollama.json": _ollama_readme_file(fake.url), "routes.json": EXAMPLES["routes"]})
        server = build_server(settings_for(tmp_path))  # mlx switched off: the fake stands in for models
        async with Client(server) as c:
            emb = await c.call_tool("embed", {"input": ["a", "b"], "model": "nomic-embed-text"})
            chat = await c.call_tool("chat", {"messages": [{"role": "user", "content": "hi"}], "model": "fast-chat"})
            default_chat = await c.call_tool("chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert not emb.is_error and emb.structured_content["adapter"] == "ollama", emb.content
    assert emb.structured_content["count"] == 2
    assert not chat.is_error and chat.structured_content["adapter"] == "ollama", chat.content
    # the example's chat route, first target, as Ollama names it: the default tag made explicit
    assert default_chat.structured_content["model"] == "llama3.2:latest"
    routes = load_manifests(tmp_path / "manifests").routes
    shipped = load_manifests().routes
    assert routes.routes["embed"] == shipped.routes["embed"] and routes.aliases["default"] == shipped.aliases["default"]


@runs("one-deadline")
def test_the_one_deadline_example_keeps_every_other_shipped_setting(tmp_path: Path) -> None:
    d = user_dir(tmp_path, {"performance-config.json": EXAMPLES["one-deadline"]})
    merged = load_manifests(d).performance.model_dump()
    shipped = json.loads((shipped_manifests_dir() / "performance-config.json").read_text())
    assert merged["deadlines"]["chat_s"] == 300
    merged["deadlines"]["chat_s"] = shipped["deadlines"]["chat_s"]
    assert merged == load_manifests().performance.model_dump()


def _remote_and_local() -> dict[str, FakeAdapter]:
    return {"cloud": FakeAdapter("cloud", privacy="remote"), "local": FakeAdapter("local")}


async def _privacy_off(tmp_path: Path, policy: str) -> tuple[Any, Any, dict[str, Any]]:
    user_dir(tmp_path, {"policy.json": policy, "routes.json": json.dumps({"routes": {"embed": ["cloud/m"]}})})
    server = build_server(settings_for(tmp_path), _remote_and_local())
    async with Client(server) as c:
        embed = await c.call_tool("embed", {"input": ["x"]})
        await c.call_tool("privacy", {"enable": True})
        off = await c.call_tool("privacy", {"enable": False})
        health = json.loads((await c.read_resource("gateway://health")).contents[0].text)
    return embed, off, health


@pytest.mark.anyio
@runs("allow-remote")
async def test_the_allow_remote_example_allows_that_adapter_and_leaves_the_privacy_guard_in_force(
    tmp_path: Path,
) -> None:
    embed, off, health = await _privacy_off(tmp_path, EXAMPLES["allow-remote"])
    assert not embed.is_error and embed.structured_content["adapter"] == "cloud"
    assert off.is_error and "rule:privacy-off-needs-operator" in off.content[0].text
    assert health["policy"]["guards"] == ["privacy-off-needs-operator"] and health["policy"]["lifted"] == []


@pytest.mark.anyio
@runs("lift-guard")
async def test_the_lift_guard_example_lets_privacy_mode_be_lifted_and_health_says_who_and_why(
    tmp_path: Path,
) -> None:
    _, off, health = await _privacy_off(tmp_path, EXAMPLES["lift-guard"])
    assert not off.is_error and off.structured_content["privacy_mode"] is False
    [lifted] = health["policy"]["lifted"]
    assert lifted["id"] == "privacy-off-needs-operator" and lifted["reason"].startswith("single-user workstation")


@pytest.mark.anyio
@runs("size-rule")
async def test_the_size_rule_example_denies_big_embeds_and_names_what_would_be_allowed(tmp_path: Path) -> None:
    user_dir(tmp_path, {"policy.json": EXAMPLES["size-rule"]})
    server = build_server(settings_for(tmp_path), {"local": FakeAdapter("local")})
    async with Client(server) as c:
        small = await c.call_tool("embed", {"input": ["x"] * 100})
        big = await c.call_tool("embed", {"input": ["x"] * 101})
    assert not small.is_error
    assert big.is_error
    assert "rule:big-embeds" in big.content[0].text and "split large batches" in big.content[0].text
    assert "allowed instead: at most 100 texts" in big.content[0].text


@runs("explain-command", "explain-output")
def test_the_explain_example_prints_what_the_readme_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = user_dir(tmp_path, {"policy.json": EXAMPLES["allow-remote"]})
    argv = EXAMPLES["explain-command"].split()
    assert argv[:3] == ["model-gateway", "policy", "explain"]
    rc = main([*argv[1:], "--manifests", str(d)])
    out = capsys.readouterr().out
    out = out.replace(str(shipped_manifests_dir()), "…/manifests").replace(str(d), USER_DIR)
    assert rc == 1
    assert out.rstrip("\n") == EXAMPLES["explain-output"]


@runs("auth-tokens")
def test_the_tokens_file_example_makes_alice_the_principal_of_her_token(tmp_path: Path) -> None:
    import anyio

    tokens = tmp_path / "tokens.json"
    tokens.write_text(EXAMPLES["auth-tokens"])
    env = {"HOME": str(tmp_path), "MODEL_GATEWAY_AUTH_TOKENS_FILE": str(tokens)}
    settings = load_settings(
        manifests_dir=user_dir(tmp_path, {}), serve=ServeOptions(transport="streamable-http"), env=env
    )
    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope.get(SCOPE_KEY))

    async def call(token: str) -> None:
        scope = {"type": "http", "path": "/mcp", "headers": [(b"authorization", f"Bearer {token}".encode())]}

        async def send(message: Any) -> None:
            pass

        await BearerAuth(app, settings.auth_subjects)(scope, receive=None, send=send)  # type: ignore[arg-type]

    anyio.run(call, "alice-token")
    anyio.run(call, "mallory-token")
    assert seen == ["alice"]  # the wrong token never reaches the app


@pytest.mark.anyio
@runs("rate-limit")
async def test_the_rate_limit_example_takes_2000_texts_at_once_and_not_more(tmp_path: Path) -> None:
    user_dir(tmp_path, {"performance-config.json": EXAMPLES["rate-limit"]})
    server = build_server(settings_for(tmp_path), {"local": FakeAdapter("local")})
    async with Client(server) as c:
        burst = await c.call_tool("embed", {"input": ["x"] * 2000})
        again = await c.call_tool("embed", {"input": ["x"] * 1000})
        too_big = await c.call_tool("embed", {"input": ["x"] * 2001})
    assert not burst.is_error, burst.content
    assert (
        again.is_error and "rate limit 'embed-texts'" in again.content[0].text and "retry in" in again.content[0].text
    )
    assert too_big.is_error and "split the request" in too_big.content[0].text
