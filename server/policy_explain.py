"""Why the policy allows or denies a call: `model-gateway policy explain`.

The same `PolicyEngine` the server builds decides; this module lists every
check of every layer in evaluation order and marks the one that decided.
Candidates come from the manifests as the router reads them (routes, aliases,
`adapter/model`, bare names and model aliases), over the models each adapter
declares; what discovery would add at run time (health, models an adapter
lists itself, privacy mode, breakers) is not known here and is said so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from adapters.manifest import AdapterManifest
from adapters.naming import canonical_for_kind
from adapters.types import Capability, Privacy
from server.errors import ConfigError
from server.manifests import Manifests
from server.policy import (
    Decision,
    Lifted,
    ModelNamer,
    PolicyCapability,
    PolicyEngine,
    PolicyRequest,
    RuleMatch,
    grant_matches,
    model_matches,
    names_match,
    over_limit,
)

Stage = Literal["guard", "rule", "grant", "default"]
TOOLS: dict[str, PolicyCapability] = {"chat": "chat", "embed": "embed", "rerank": "rerank", "privacy": "admin"}
ADMIN_TARGET = "gateway"  # what the `privacy` tool asks the policy about: adapter "gateway", model "off"
UNKNOWN_MODEL = ""  # an adapter that lists its models itself: the name is known only after discovery


@dataclass(frozen=True, slots=True)
class Check:
    """One step: what was compared, from which layer, whether it matched, and whether it decided."""

    stage: Stage
    layer: str
    name: str
    matched: bool
    detail: str
    decides: bool = False


@dataclass(frozen=True)
class Explanation:
    request: PolicyRequest
    decision: Decision
    checks: tuple[Check, ...]
    lifted: tuple[Lifted, ...]


def first_miss(m: RuleMatch, r: PolicyRequest, engine: PolicyEngine) -> str | None:
    """The first condition of `m` that `r` fails, in words; None when every condition holds."""
    names = (("tool", m.tool, r.tool), ("adapter", m.adapter, r.adapter), ("principal", m.principal, r.principal))
    for field, patterns, value in names:
        if not names_match(patterns, value):
            return f"{field} {value!r} not in {patterns}"
    if m.capability is not None and r.capability not in m.capability:
        return f"capability {r.capability!r} not in {m.capability}"
    if m.model is not None and not model_matches(m.model, r.adapter, r.model, engine.namer):
        return f"model {r.model!r} not in {m.model}"
    if m.privacy is not None and r.privacy not in m.privacy:
        return f"privacy {r.privacy!r} not in {m.privacy}"
    for size in ("texts", "chars", "documents", "max_tokens"):
        limit = getattr(m, f"{size}_over")
        if not over_limit(limit, getattr(r, size)):
            return f"{size} {getattr(r, size)} not over {limit}"
    return None


def explain(engine: PolicyEngine, req: PolicyRequest) -> Explanation:
    """The engine's decision and every check of every layer, in evaluation order; the deciding one is marked."""
    decision = engine.evaluate(req)
    checks = [
        Check("guard", engine.defined_in(x.id), f"rule:{x.id}", False, f"lifted by {x.by}: {x.reason}")
        for x in engine.lifted
    ]
    for e in engine.entries:
        miss = first_miss(e.rule.match, req, engine)
        detail = e.rule.effect if miss is None else f"no match: {miss}"
        checks.append(Check(e.stage, e.layer.name, e.label, miss is None, detail))
    for n, (grant_layer, g) in enumerate(engine.grants):
        ok = grant_matches(g, req)
        what = f"tool {g.tool!r}, adapter {g.adapter!r}, principal {g.principal!r}"
        checks.append(Check("grant", grant_layer.name, f"grant:{n}", ok, ("allow: " if ok else "no match: ") + what))
    remote = req.privacy == "remote"
    effect, layer = engine.default_remote if remote else engine.default
    checks.append(Check("default", layer, "default-remote" if remote else "default", True, effect))
    decided = next((i for i, c in enumerate(checks) if c.matched and c.name == decision.rule), None)
    if decided is not None:
        checks[decided] = replace(checks[decided], decides=True)
    return Explanation(req, decision, tuple(checks), engine.lifted)


# --- candidates, as the router reads the manifests ------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    adapter: str
    model: str
    privacy: Privacy
    admin: bool = False  # the gateway's own control, not a model call

    @property
    def label(self) -> str:
        if self.admin:
            return "the gateway (privacy mode off)"
        return f"{self.adapter}/{self.model or '<listed by the adapter at run time>'}"


def _declared(a: AdapterManifest, capability: Capability) -> list[str]:
    return [m.name for m in a.models if capability in m.capabilities]


def _expand(adapters: dict[str, AdapterManifest], target: str, capability: Capability) -> list[Target]:
    name, sep, model = target.partition("/")
    a = adapters.get(name)
    if a is None:
        return []
    if sep:
        return [Target(name, canonical_for_kind(a.kind, model), a.privacy)]
    declared = _declared(a, capability)
    if declared:
        return [Target(name, canonical_for_kind(a.kind, declared[0]), a.privacy)]
    return [Target(name, UNKNOWN_MODEL, a.privacy)] if not a.models else []


def _route_order(manifests: Manifests) -> list[str]:
    order = [t.partition("/")[0] for targets in manifests.routes.routes.values() for t in targets]
    order += [a.name for a in manifests.adapters]
    return list(dict.fromkeys(order))


def _by_name(manifests: Manifests, adapters: dict[str, AdapterManifest], model: str) -> list[Target]:
    found = []
    for name in _route_order(manifests):
        a = adapters.get(name)
        canonical = canonical_for_kind(a.kind, model) if a is not None else model
        if a is not None and any(canonical_for_kind(a.kind, m.name) == canonical for m in a.models):
            found.append(Target(name, canonical, a.privacy))
    for a in manifests.adapters:
        spec = next((m for m in a.models if model in m.aliases), None)
        if spec is not None and all(t.adapter != a.name for t in found):
            found.append(Target(a.name, canonical_for_kind(a.kind, spec.name), a.privacy))
    return found


def manifest_namer(manifests: Manifests) -> ModelNamer:
    """Model names spelled the way each adapter's kind spells them, from the manifests alone."""
    kinds = {a.name: a.kind for a in manifests.adapters}
    return lambda adapter, model: canonical_for_kind(kinds.get(adapter, ""), model)


def candidates(manifests: Manifests, capability: Capability, model: str | None) -> list[Target]:
    """What `model` can mean for `capability`, in route order, before health, privacy mode and breakers."""
    adapters = {a.name: a for a in manifests.adapters}
    routes = manifests.routes
    if model is None or model == "default":
        found = [t for target in routes.routes.get(capability) or [] for t in _expand(adapters, target, capability)]
        found = found or [t for name in adapters for t in _expand(adapters, name, capability)]
    elif model in routes.aliases:
        found = [t for target in routes.aliases[model] for t in _expand(adapters, target, capability)]
    elif "/" in model and model.partition("/")[0] in adapters:
        found = _expand(adapters, model, capability)
    else:
        found = _by_name(manifests, adapters, model)
    return list(dict.fromkeys(found))


# --- one call, explained ---------------------------------------------------------------


@dataclass(frozen=True)
class CallQuery:
    tool: str
    model: str | None
    principal: str
    adapter: str | None = None
    texts: int = 0
    chars: int = 0
    documents: int = 0
    max_tokens: int = 0


@dataclass(frozen=True)
class CallExplanation:
    query: CallQuery
    candidates: tuple[tuple[Target, Explanation], ...]
    decision: Decision | None  # None: nothing to decide on (no candidate)
    chosen: Target | None


def _targets(manifests: Manifests, q: CallQuery, capability: PolicyCapability) -> list[Target]:
    if capability == "admin":  # the gateway's own controls: what the `privacy` tool asks the policy
        return [Target(ADMIN_TARGET, "off", "local", admin=True)]
    found = candidates(manifests, capability, q.model)
    if q.adapter is None:
        return found
    adapters = {a.name: a for a in manifests.adapters}
    if q.adapter not in adapters:
        names = ", ".join(sorted(adapters)) or "none enabled"
        raise ConfigError(f"--adapter {q.adapter!r}: no enabled adapter of that name (adapters: {names})")
    mine = [t for t in found if t.adapter == q.adapter]
    if q.model is None or q.model == "default" or q.model in manifests.routes.aliases:
        return mine or _expand(adapters, q.adapter, capability)
    return mine or _expand(adapters, f"{q.adapter}/{q.model.removeprefix(q.adapter + '/')}", capability)


def explain_call(manifests: Manifests, engine: PolicyEngine, q: CallQuery) -> CallExplanation:
    """Each candidate's explanation, and the call's decision as the pipeline takes it: the first allowed
    candidate serves; with none allowed, the first denial is the answer."""
    capability = TOOLS.get(q.tool)
    if capability is None:
        raise ConfigError(f"--tool {q.tool!r}: policy governs {', '.join(TOOLS)}")
    sizes = {"texts": q.texts, "chars": q.chars, "documents": q.documents, "max_tokens": q.max_tokens}
    rows = []
    for t in _targets(manifests, q, capability):
        req = PolicyRequest(q.tool, capability, t.model, t.adapter, t.privacy, q.principal, **sizes)
        rows.append((t, explain(engine, req)))
    chosen = next(((t, e) for t, e in rows if e.decision.allowed), rows[0] if rows else None)
    return CallExplanation(q, tuple(rows), chosen[1].decision if chosen else None, chosen[0] if chosen else None)


def to_json(ex: CallExplanation, engine: PolicyEngine) -> dict[str, Any]:
    d = ex.decision
    return {
        "tool": ex.query.tool,
        "model": ex.query.model,
        "principal": ex.query.principal,
        "policy": engine.summary(),
        "decision": None if d is None else {**_decision(d), "candidate": ex.chosen.label if ex.chosen else None},
        "candidates": [
            {
                "candidate": t.label,
                "privacy": t.privacy,
                "decision": _decision(e.decision),
                "checks": [_check(c) for c in e.checks],
            }
            for t, e in ex.candidates
        ],
    }


def _decision(d: Decision) -> dict[str, Any]:
    return {"effect": d.effect, "rule": d.rule, "reason": d.reason, "hint": d.hint}


def _check(c: Check) -> dict[str, Any]:
    return {
        "stage": c.stage,
        "layer": c.layer,
        "name": c.name,
        "matched": c.matched,
        "detail": c.detail,
        "decides": c.decides,
    }


def to_text(ex: CallExplanation, engine: PolicyEngine) -> str:
    q = ex.query
    asked = "turn privacy mode off" if q.tool == "privacy" else f"model {q.model or 'default'}"
    lines = [f"tool {q.tool}, {asked}, principal {q.principal}"]
    lines += [f"layer {la['name']}: {la['source']}" for la in engine.summary()["layers"]]
    lines += [f"lifted guard {x.id} (by {x.by}): {x.reason}" for x in engine.lifted]
    for t, e in ex.candidates:
        privacy = "" if t.admin else f" ({t.privacy})"
        lines.append(f"candidate {t.label}{privacy}: {e.decision.effect} by {e.decision.rule}")
        for c in e.checks:
            mark = "  <- decides" if c.decides else ""
            lines.append(f"  {c.stage:<8} {c.layer:<9} {c.name:<32} {c.detail}{mark}")
    if ex.decision is None:
        lines.append("decision: none: no adapter in the manifests serves this model for this tool")
    else:
        where = f" on {ex.chosen.label}" if ex.chosen else ""
        lines.append(f"decision: {ex.decision.effect}{where} by {_said(ex.decision)}")
    lines.append("(not judged here: adapter health, models discovered at run time, privacy mode, breakers)")
    return "\n".join(lines)


def _said(d: Decision) -> str:
    text = d.rule
    if d.reason:
        text += f": {d.reason}"
    if d.hint:
        text += f"; allowed instead: {d.hint}"
    return text
