"""The engine against a reference written straight from the documented order, on generated policies."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from server.policy import PolicyEngine, PolicyManifest, PolicyRequest

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


def reference(policy: dict[str, Any], r: dict[str, Any]) -> tuple[str, str]:
    for rule in policy["rules"]:
        m = rule["match"]
        names = all(
            m.get(f) is None or any(glob(p, r[f]) for p in m[f]) for f in ("tool", "model", "adapter", "principal")
        )
        classes = all(m.get(f) is None or r[f] in m[f] for f in ("capability", "privacy"))
        sizes = all(
            m.get(f + "_over") is None or r[f] > m[f + "_over"] for f in ("texts", "chars", "documents", "max_tokens")
        )
        if names and classes and sizes:
            return rule["effect"], "rule:" + rule["id"]
    for n, g in enumerate(policy["grants"]):
        if glob(g["tool"], r["tool"]) and glob(g["adapter"], r["adapter"]) and glob(g["principal"], r["principal"]):
            return "allow", f"grant:{n}"
    if r["privacy"] == "remote":
        return policy["default_remote"], "default-remote"
    return policy["default"], "default"


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
