from __future__ import annotations

from server.policy import Decision, PolicyEngine, PolicyManifest, PolicyRequest


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
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="repeated: a"):
        PolicyManifest.model_validate({"rules": [{"id": "a", "effect": "allow"}, {"id": "a", "effect": "deny"}]})
