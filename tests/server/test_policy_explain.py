"""`model-gateway policy explain`: the server's decision, the rule that made it, and what each layer checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from adapters.types import Capability
from server.cli import main
from server.config import load_settings
from server.policy import Decision, PolicyEngine
from server.policy_explain import CallQuery, explain, explain_call
from tests.server.test_policy import GUARD, PRIVACY_OFF, layered, req
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server, write_manifests

ALL: set[Capability] = {"chat", "embed", "rerank"}
ADAPTERS: dict[str, dict[str, Any]] = {
    "a": {"privacy": "local", "models": {"m": ALL, "only-a": {"embed"}}},
    "b": {"privacy": "local", "models": {"m": ALL, "n": {"embed", "rerank"}}},
    "cloud": {"privacy": "remote", "models": {"m": ALL}},
}
ROUTES = {"routes": {"embed": ["b/n", "a/m"], "chat": ["a"]}, "aliases": {"fast": ["b/n", "cloud/m"]}}
ALLOW_X = {"rules": [{"id": "allow-x", "effect": "allow", "match": {"adapter": ["x"]}}]}


def _manifests(root: Path, policy: dict[str, Any] | None = None) -> Path:
    """A user dir declaring the adapters the fakes serve, so manifests and the live snapshot agree."""
    d = write_manifests(root, routes=ROUTES, policy=policy)
    for name, spec in ADAPTERS.items():
        models = [{"name": m, "capabilities": sorted(c)} for m, c in spec["models"].items()]
        if name == "a":
            models[0]["aliases"] = ["m-alias"]
        # a kind that keeps model names as given, as the fakes do
        manifest = {"name": name, "kind": "openai", "endpoint": "http://127.0.0.1:9", "privacy": spec["privacy"]}
        (d / "adapters" / f"{name}.json").write_text(json.dumps({**manifest, "models": models}))
    return d


def _fakes() -> dict[str, FakeAdapter]:
    return {n: FakeAdapter(n, s["models"], privacy=s["privacy"]) for n, s in ADAPTERS.items()}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "model"),
    [("embed", None), ("chat", None), ("embed", "fast"), ("embed", "m"), ("embed", "a/only-a"), ("chat", "m-alias")],
)
async def test_explain_resolves_the_candidates_the_server_routes_the_same_call_to(
    tmp_path: Path, tool: str, model: str | None
) -> None:
    mdir = _manifests(tmp_path / "manifests")
    server, ref = fake_server(tmp_path, _fakes())
    args: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]} if tool == "chat" else {"input": ["x"]}
    async with Client(server) as c:
        result = await c.call_tool(tool, {**args, **({"model": model} if model else {})})
        audit = [json.loads(x) for x in ref.get().audit.path.read_text().splitlines()]
    assert not result.is_error, result.content
    [start] = [r for r in audit if r["event"] == "start"]
    settings = load_settings(manifests_dir=mdir, env={"HOME": str(tmp_path)})
    engine = PolicyEngine(settings.manifests.policy)
    ex = explain_call(settings.manifests, engine, CallQuery(tool, model, "alice"))
    assert [t.label for t, e in ex.candidates if e.decision.allowed] == start["candidates"]
    assert ex.decision is not None and ex.decision.rule == start["rule"]
    assert ex.chosen is not None and ex.chosen.label == f"{result.structured_content['adapter']}/" + str(
        result.structured_content["model"]
    )


def test_explain_shows_the_shipped_guard_deciding_when_the_user_file_only_adds_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _manifests(tmp_path / "manifests", ALLOW_X)
    rc = main(["policy", "explain", "--manifests", str(tmp_path / "manifests"), "--tool", "privacy"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "rule:privacy-off-needs-operator  deny  <- decides" in out
    assert "rule     user      rule:allow-x" in out and "no match: adapter 'gateway' not in ['x']" in out
    decision = out.splitlines()[-2]
    assert decision.startswith("decision: deny on the gateway (privacy mode off) by rule:privacy-off-needs-operator")


def test_explain_json_lists_every_layer_and_marks_the_one_check_that_decided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _manifests(tmp_path / "manifests", {**ALLOW_X, "default_remote": "deny"})
    argv = ["policy", "explain", "--manifests", str(tmp_path / "manifests"), "--json"]
    rc = main([*argv, "--tool", "embed", "--model", "fast", "--principal", "bob"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["principal"] == "bob"
    assert [la["name"] for la in out["policy"]["layers"]] == ["shipped", "user"]
    assert out["decision"] == {"effect": "allow", "rule": "default", "reason": None, "hint": None, "candidate": "b/n"}
    cloud = out["candidates"][1]
    assert cloud["candidate"] == "cloud/m" and cloud["decision"]["rule"] == "default-remote"
    assert [(c["stage"], c["layer"], c["decides"]) for c in cloud["checks"]] == [
        ("guard", "shipped", False),
        ("rule", "user", False),
        ("default", "user", True),
    ]


def test_explain_of_a_lifted_guard_allows_and_says_who_lifted_it_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mdir = _manifests(tmp_path / "manifests", {"override": [{"id": "privacy-off-needs-operator", "reason": "lab"}]})
    rc = main(["policy", "explain", "--manifests", str(mdir), "--tool", "privacy"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"lifted guard privacy-off-needs-operator (by {mdir / 'policy.json'}): lab" in out
    assert f"lifted by {mdir / 'policy.json'}: lab" in out
    assert "decision: allow on the gateway (privacy mode off) by default" in out


def test_explain_takes_the_call_sizes_and_names_what_would_be_allowed_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = {"rules": [{"id": "big", "effect": "deny", "match": {"texts_over": 100}, "reason": "split it"}]}
    mdir = _manifests(tmp_path / "manifests", big)
    rc = main(["policy", "explain", "--manifests", str(mdir), "--tool", "embed", "--adapter", "a", "--texts", "500"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "decision: deny on a/m by rule:big: split it; allowed instead: at most 100 texts" in out
    assert "candidate b/" not in out  # --adapter narrows to one adapter's candidate


SPELLINGS = ["ollama/LLAMA3.2:1b", "library/llama3.2:1b", "registry.ollama.ai/library/llama3.2:1b"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_explain_judges_any_spelling_of_a_model_as_its_adapter_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    deny = {"rules": [{"id": "no-llama", "effect": "deny", "match": {"model": ["Llama3.2:1b"]}}]}
    mdir = write_manifests(tmp_path / "manifests", policy=deny)
    llama = {"name": "llama3.2:1b", "capabilities": ["chat"]}
    manifest = {"name": "ollama", "kind": "ollama", "endpoint": "http://127.0.0.1:9", "models": [llama]}
    (mdir / "adapters" / "ollama.json").write_text(json.dumps(manifest))
    rc = main(["policy", "explain", "--manifests", str(mdir), "--tool", "chat", "--model", spelling])
    out = capsys.readouterr().out
    assert rc == 1
    assert "decision: deny on ollama/llama3.2:1b by rule:no-llama" in out, out


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["--tool", "embed", "--adapter", "nope"], 2, "--adapter 'nope': no enabled adapter of that name"),
        (["--tool", "embed", "--model", "no-such-model"], 1, "decision: none: no adapter in the manifests serves"),
        (["--tool", "embed", "--texts", "-1"], 2, "-1 is not between 0 and 1000000000"),
    ],
)
def test_explain_says_what_is_wrong_with_the_question(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, needle: str
) -> None:
    mdir = _manifests(tmp_path / "manifests")
    try:
        rc = main(["policy", "explain", "--manifests", str(mdir), *argv])
    except SystemExit as exc:  # argparse refuses bad numbers itself
        rc = int(exc.code or 0)
    captured = capsys.readouterr()
    assert rc == code and needle in captured.out + captured.err


def test_explain_names_the_deciding_rule_and_what_every_layer_checked() -> None:
    e = layered(
        {"guards": [GUARD]},
        {"rules": [{"id": "allow-x", "effect": "allow", "match": {"adapter": ["x"]}}]},
    )
    ex = explain(e, req(adapter="mlx"))
    assert ex.decision == Decision("allow", "default")
    rows = [(c.stage, c.layer, c.name, c.matched, c.decides) for c in ex.checks]
    assert rows == [
        ("guard", "shipped", "rule:privacy-off-needs-operator", False, False),
        ("rule", "user", "rule:allow-x", False, False),
        ("default", "built-in", "default", True, True),
    ]
    assert ex.checks[0].detail == "no match: tool 'embed' not in ['privacy']"
    assert ex.checks[1].detail == "no match: adapter 'mlx' not in ['x']"
    denied = explain(e, req(**PRIVACY_OFF))
    assert [c.name for c in denied.checks if c.decides] == ["rule:privacy-off-needs-operator"]


def test_a_lifted_guard_shows_in_explain_with_who_lifted_it_and_why() -> None:
    e = layered({"guards": [GUARD]}, {"override": [{"id": GUARD["id"], "reason": "lab box"}]})
    first = explain(e, req(**PRIVACY_OFF)).checks[0]
    assert (first.stage, first.layer, first.name, first.matched) == ("guard", "shipped", f"rule:{GUARD['id']}", False)
    assert first.detail == "lifted by user/policy.json: lab box"
