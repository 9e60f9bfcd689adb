from __future__ import annotations

import logging

import pytest

from server.policy import Decision, PolicyEngine, PolicyLayer, PolicyManifest, PolicyRequest, layer_policies


def req(**kw) -> PolicyRequest:  # type: ignore[no-untyped-def]
    base = {
        "tool": "embed",
        "capability": "embed",
        "model": "m",
        "adapter": "mlx",
        "privacy": "local",
        "principal": "alice",
        "texts": 1,
        "chars": 10,
    }
    return PolicyRequest(**{**base, **kw})


def engine(**kw) -> PolicyEngine:  # type: ignore[no-untyped-def]
    return PolicyEngine(PolicyManifest.model_validate(kw))


def test_rules_come_first_and_the_first_match_wins() -> None:
    e = engine(
        rules=[
            {"id": "no-big", "effect": "deny", "match": {"texts_over": 100}, "reason": "split the batch"},
            {"id": "cloud-ok", "effect": "allow", "match": {"adapter": ["cloud*"]}},
        ],
        grants=[{"tool": "*", "adapter": "*", "principal": "*"}],
        default="deny",
    )
    assert e.evaluate(req(texts=101)) == Decision("deny", "rule:no-big", "split the batch", "at most 100 texts")
    assert e.evaluate(req(adapter="cloud-eu", privacy="remote")).rule == "rule:cloud-ok"
    assert e.evaluate(req()).rule == "grant:0"


def test_grants_allow_by_tool_adapter_and_principal() -> None:
    e = engine(grants=[{"tool": "chat", "adapter": "ollama", "principal": "bob"}], default="deny")
    assert e.evaluate(req(tool="chat", capability="chat", adapter="ollama", principal="bob")).allowed
    assert not e.evaluate(req(tool="chat", capability="chat", adapter="ollama", principal="eve")).allowed


def test_remote_adapters_fall_to_default_remote() -> None:
    e = engine()
    assert e.evaluate(req(privacy="remote", adapter="cloud")) == Decision("deny", "default-remote")
    assert e.evaluate(req()) == Decision("allow", "default")


def test_a_denial_names_no_size_hint_when_a_smaller_call_would_still_be_denied() -> None:
    e = engine(rules=[{"id": "big", "effect": "deny", "match": {"chars_over": 5}}], default="deny")
    assert e.evaluate(req(chars=10)) == Decision("deny", "rule:big", None, None)


def test_an_error_inside_evaluation_denies_as_policy_error() -> None:
    e = engine(rules=[{"id": "p", "effect": "allow", "match": {"principal": ["ali*"]}}])
    broken = req(principal=None)  # an identity the transport failed to supply
    d = e.evaluate(broken)
    assert d.effect == "deny" and d.rule == "policy_error"


def test_repeated_rule_ids_are_rejected_when_the_file_loads() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="repeated: a"):
        PolicyManifest.model_validate({"rules": [{"id": "a", "effect": "allow"}, {"id": "a", "effect": "deny"}]})


def layered(shipped: dict, user: dict | None = None) -> PolicyEngine:  # type: ignore[type-arg]
    layers = [PolicyLayer("shipped", "shipped/policy.json", PolicyManifest.model_validate(shipped))]
    if user is not None:
        layers.append(PolicyLayer("user", "user/policy.json", PolicyManifest.model_validate(user)))
    return PolicyEngine(layer_policies(layers))


GUARD = {"id": "privacy-off-needs-operator", "effect": "deny", "match": {"tool": ["privacy"]}}
PRIVACY_OFF = {"tool": "privacy", "capability": "admin", "model": "off", "adapter": "gateway"}


def test_a_user_file_that_adds_an_allow_rule_keeps_the_shipped_guard_in_force() -> None:
    e = layered(
        {"guards": [GUARD]},
        {"rules": [{"id": "allow-x", "effect": "allow", "match": {"adapter": ["x"]}}], "default": "allow"},
    )
    assert e.evaluate(req(**PRIVACY_OFF)).rule == "rule:privacy-off-needs-operator"
    assert e.evaluate(req(adapter="x", privacy="remote")) == Decision("allow", "rule:allow-x")


def test_even_a_user_allow_everything_rule_cannot_outvote_a_guard() -> None:
    e = layered({"guards": [GUARD]}, {"rules": [{"id": "all", "effect": "allow"}], "default": "allow"})
    assert not e.evaluate(req(**PRIVACY_OFF)).allowed


def test_a_guard_is_lifted_only_by_naming_it_and_the_lift_is_logged_and_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="model_gateway.policy"):
        e = layered({"guards": [GUARD]}, {"override": [{"id": GUARD["id"], "reason": "single-operator lab box"}]})
    assert e.evaluate(req(**PRIVACY_OFF)) == Decision("allow", "default")
    assert "privacy-off-needs-operator is lifted by user/policy.json: single-operator lab box" in caplog.text
    assert e.summary()["lifted"] == [{"id": GUARD["id"], "reason": "single-operator lab box", "by": "user/policy.json"}]
    assert e.summary()["guards"] == []


def test_user_rules_come_before_shipped_rules_and_defaults_come_from_the_last_layer_that_sets_them() -> None:
    shipped = {"rules": [{"id": "no-cloud", "effect": "deny", "match": {"adapter": ["cloud"]}}], "default": "deny"}
    e = layered(shipped, {"rules": [{"id": "cloud-for-bob", "effect": "allow", "match": {"principal": ["bob"]}}]})
    assert e.evaluate(req(adapter="cloud", principal="bob")).rule == "rule:cloud-for-bob"
    assert e.evaluate(req(adapter="cloud", principal="eve")).rule == "rule:no-cloud"
    assert e.evaluate(req()) == Decision("deny", "default")  # the user file does not set `default`
    assert layered(shipped, {"default": "allow"}).evaluate(req()) == Decision("allow", "default")


def test_grants_of_every_layer_allow() -> None:
    e = layered(
        {"grants": [{"tool": "chat", "adapter": "a"}], "default": "deny"},
        {"grants": [{"tool": "embed", "adapter": "b"}]},
    )
    assert e.evaluate(req(tool="chat", capability="chat", adapter="a")).rule == "grant:0"
    assert e.evaluate(req(adapter="b")).rule == "grant:1"
    assert not e.evaluate(req(adapter="c")).allowed


def test_a_model_rule_matches_every_spelling_the_adapter_gives_the_same_model() -> None:
    def ollama_names(adapter: str, model: str) -> str:
        name = model.lower().removeprefix("registry.ollama.ai/").removeprefix("library/")
        return name if ":" in name else name + ":latest"

    deny = {"rules": [{"id": "no-llama", "effect": "deny", "match": {"model": ["LLAMA3.2:1b"]}}]}
    e = PolicyEngine(PolicyManifest.model_validate(deny), namer=ollama_names)
    assert e.evaluate(req(adapter="ollama", model="llama3.2:1b")).rule == "rule:no-llama"
    qualified = {"rules": [{"id": "q", "effect": "deny", "match": {"model": ["ollama/library/llama3.2:1b"]}}]}
    e = PolicyEngine(PolicyManifest.model_validate(qualified), namer=ollama_names)
    assert e.evaluate(req(adapter="ollama", model="llama3.2:1b")).rule == "rule:q"
    assert e.evaluate(req(adapter="other", model="llama3.2:1b")).rule == "default"


def test_a_model_pattern_with_a_slash_also_matches_adapter_slash_model() -> None:
    e = engine(rules=[{"id": "d", "effect": "deny", "match": {"model": ["ollama/*"]}}])
    assert e.evaluate(req(adapter="ollama", model="llama3.2:1b")).rule == "rule:d"
    assert e.evaluate(req(adapter="mlx", model="llama3.2:1b")).rule == "default"
    org = engine(rules=[{"id": "o", "effect": "deny", "match": {"model": ["BAAI/*"]}}])
    assert org.evaluate(req(adapter="tei", model="BAAI/bge-small-en")).rule == "rule:o"
    plain = engine(rules=[{"id": "p", "effect": "deny", "match": {"model": ["o*"]}}])
    assert plain.evaluate(req(adapter="ollama", model="llama3.2:1b")).rule == "default"
