"""The engine against a reference written straight from the documented order, on generated policies."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from server.policy import PolicyEngine, PolicyLayer, PolicyManifest, PolicyRequest, layer_policies
from server.policy_explain import explain

NAMES = ["a", "b", "ab", "cloud-1", "local"]
PATTERNS = [*NAMES, "*", "a*", "*b", "cloud-?", "[al]*"]
TOOLS = ["chat", "embed", "rerank", "privacy"]
CAPS = ["chat", "embed", "rerank", "admin"]


def glob(pattern: str, value: str) -> bool:
    """An independent glob: '*' any run, '?' one char, '[..]' a set; nothing else is special."""
    out = ""
    for token in re.findall(r"\[[^\]]*\]|.", pattern):
        if token == "*":
            out += ".*"
        elif token == "?":
            out += "."
        elif token.startswith("[") and len(token) > 1:
            out += "[" + re.escape(token[1:-1]) + "]"
        else:
            out += re.escape(token)
    return re.fullmatch(out, value, re.DOTALL) is not None


def holds(m: dict[str, Any], r: dict[str, Any]) -> bool:
    names = all(m.get(f) is None or any(glob(p, r[f]) for p in m[f]) for f in ("tool", "model", "adapter", "principal"))
    classes = all(m.get(f) is None or r[f] in m[f] for f in ("capability", "privacy"))
    sizes = all(
        m.get(f + "_over") is None or r[f] > m[f + "_over"] for f in ("texts", "chars", "documents", "max_tokens")
    )
    return names and classes and sizes


def reference(policy: dict[str, Any], r: dict[str, Any]) -> tuple[str, str]:
    return layered_reference(policy, {}, r)


def layered_reference(shipped: dict[str, Any], user: dict[str, Any], r: dict[str, Any]) -> tuple[str, str]:
    """The README's order: guards (shipped, then user; minus lifted), user rules, shipped rules, grants, default."""
    lifted = {o["id"] for o in user.get("override", [])}
    guards = [g for g in shipped.get("guards", []) if g["id"] not in lifted] + user.get("guards", [])
    for rule in guards + user.get("rules", []) + shipped.get("rules", []):
        if holds(rule["match"], r):
            return rule["effect"], "rule:" + rule["id"]
    for n, g in enumerate(shipped.get("grants", []) + user.get("grants", [])):
        if glob(g["tool"], r["tool"]) and glob(g["adapter"], r["adapter"]) and glob(g["principal"], r["principal"]):
            return "allow", f"grant:{n}"
    key = "default_remote" if r["privacy"] == "remote" else "default"
    built_in = {"default": "allow", "default_remote": "deny"}[key]
    return user.get(key, shipped.get(key, built_in)), key.replace("_", "-")


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


matches = st.fixed_dictionaries(
    {},
    optional={
        "tool": st.lists(st.sampled_from([*TOOLS, "*", "e*"]), min_size=1, max_size=2),
        "capability": st.lists(st.sampled_from(CAPS), min_size=1, max_size=2),
        "model": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2),
        "adapter": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2),
        "privacy": st.lists(st.sampled_from(["local", "remote"]), min_size=1, max_size=2),
        "principal": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2),
        "texts_over": st.integers(0, 4),
        "chars_over": st.integers(0, 40),
        "documents_over": st.integers(0, 4),
        "max_tokens_over": st.integers(0, 64),
    },
)
rules = st.lists(
    st.fixed_dictionaries({"effect": st.sampled_from(["allow", "deny"]), "match": matches}), max_size=6
).map(lambda rs: [{"id": f"r{i}", **r} for i, r in enumerate(rs)])
grants = st.lists(
    st.fixed_dictionaries(
        {
            "tool": st.sampled_from(["*", *TOOLS]),
            "adapter": st.sampled_from(PATTERNS),
            "principal": st.sampled_from(PATTERNS),
        }
    ),
    max_size=3,
)
policies = st.fixed_dictionaries(
    {
        "rules": rules,
        "grants": grants,
        "default": st.sampled_from(["allow", "deny"]),
        "default_remote": st.sampled_from(["allow", "deny"]),
    }
)
requests = st.fixed_dictionaries(
    {
        "tool": st.sampled_from(TOOLS),
        "capability": st.sampled_from(CAPS),
        "model": st.sampled_from(NAMES),
        "adapter": st.sampled_from(NAMES),
        "privacy": st.sampled_from(["local", "remote"]),
        "principal": st.sampled_from(NAMES),
        "texts": st.integers(0, 5),
        "chars": st.integers(0, 50),
        "documents": st.integers(0, 5),
        "max_tokens": st.integers(0, 80),
    }
)


@settings(max_examples=1500, deadline=None)
@given(policy=policies, batch=st.lists(requests, min_size=8, max_size=16))
def test_engine_matches_the_reference_on_generated_policies_and_requests(
    policy: dict[str, Any], batch: list[dict[str, Any]]
) -> None:
    engine = PolicyEngine(PolicyManifest.model_validate(policy))
    for r in batch:
        d = engine.evaluate(PolicyRequest(**r))
        assert (d.effect, d.rule) == reference(policy, r), (policy, r)


def test_the_reference_glob_agrees_on_hand_picked_cases() -> None:
    assert glob("cloud-?", "cloud-1") and not glob("cloud-?", "cloud-12")
    assert glob("[al]*", "ab") and glob("[al]*", "local") and not glob("[al]*", "b")
    assert glob("*b", "ab") and not glob("a*", "b")


def _rules(prefix: str, effect: st.SearchStrategy[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(st.fixed_dictionaries({"effect": effect, "match": matches}), max_size=3).map(
        lambda rs: [{"id": f"{prefix}{i}", **r} for i, r in enumerate(rs)]
    )


_defaults = {"default": st.sampled_from(["allow", "deny"]), "default_remote": st.sampled_from(["allow", "deny"])}
shipped_layers = st.fixed_dictionaries(
    {"guards": _rules("sg", st.just("deny")), "rules": _rules("s", st.sampled_from(["allow", "deny"]))},
    optional={"grants": grants, **_defaults},
)


@st.composite
def layer_pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    shipped = draw(shipped_layers)
    user = draw(
        st.fixed_dictionaries(
            {"guards": _rules("ug", st.just("deny")), "rules": _rules("u", st.sampled_from(["allow", "deny"]))},
            optional={"grants": grants, **_defaults},
        )
    )
    ids = [g["id"] for g in shipped["guards"]]
    lifted = draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    user["override"] = [{"id": i, "reason": "generated"} for i in lifted]
    return shipped, user


@settings(max_examples=400, deadline=None)
@given(pair=layer_pairs(), batch=st.lists(requests, min_size=8, max_size=16))
def test_layered_engine_and_its_explanation_match_the_documented_order(
    pair: tuple[dict[str, Any], dict[str, Any]], batch: list[dict[str, Any]]
) -> None:
    shipped, user = pair
    engine = PolicyEngine(
        layer_policies(
            [
                PolicyLayer("shipped", "s.json", PolicyManifest.model_validate(shipped)),
                PolicyLayer("user", "u.json", PolicyManifest.model_validate(user)),
            ]
        )
    )
    for r in batch:
        request = PolicyRequest(**r)
        d = engine.evaluate(request)
        assert (d.effect, d.rule) == layered_reference(shipped, user, r), (shipped, user, r)
        explained = explain(engine, request)
        assert explained.decision == d
        assert [c.name for c in explained.checks if c.decides] == [d.rule]
