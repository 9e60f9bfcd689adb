"""Policy: which calls may run on which adapter.

The policy is layered: the shipped `policy.json`, then the user's. Evaluation
order is fixed:
  1. guards, every layer's in layer order (shipped first): deny rules that a
     later layer cannot outvote, only lift by naming them in `override` with a
     reason; the first guard that matches denies;
  2. rules, the user's layer first, then the shipped one, each in file order;
     the first rule whose every condition matches decides (allow or deny);
  3. grants from every layer: an allow-list of tool x adapter x principal;
     any match allows;
  4. the default: `default_remote` for adapters of privacy class "remote",
     `default` for the rest, from the last layer that sets it.

So a user file that only adds rules leaves the shipped guards (privacy mode
can be lifted only by the operator) in force. Lifted guards are logged when
the engine starts and shown in health and `model-gateway policy explain`.

The pipeline asks once per route candidate, so conditions on adapter and
privacy class see the concrete backend a call would reach. The principal is
the local user on stdio and the authenticated token's subject on HTTP.

Fail closed: an error inside evaluation denies the call with rule
`policy_error` (and the pipeline audits it); a policy file that does not
validate stops the server at start, naming the file and field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapters.types import Privacy
from server.errors import ConfigError

log = logging.getLogger("model_gateway.policy")

Effect = Literal["allow", "deny"]
# "admin" is the gateway's own controls (the `privacy` tool), so rules can govern them like model calls
PolicyCapability = Literal["chat", "embed", "rerank", "admin"]
POLICY_ERROR = "policy_error"
RULE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# (adapter, model name as a rule spells it) -> that adapter's canonical spelling of the model
ModelNamer = Callable[[str, str], str]
_GLOB_CHARS = frozenset("*?[")
_NAMER_CACHE_CAP = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleMatch(_Strict):
    """Every condition given must hold; lists match any element; names accept shell globs."""

    tool: list[str] | None = None
    capability: list[PolicyCapability] | None = None
    model: list[str] | None = Field(
        None,
        description="Model names (globs) as the adapter names them; a pattern with '/' also matches 'adapter/model'.",
    )
    adapter: list[str] | None = None
    privacy: list[Privacy] | None = None
    principal: list[str] | None = None
    texts_over: int | None = Field(None, ge=0, description="Matches when the call carries more texts than this.")
    chars_over: int | None = Field(None, ge=0, description="Matches when the call's total characters exceed this.")
    documents_over: int | None = Field(None, ge=0, description="Matches when the call carries more documents.")
    max_tokens_over: int | None = Field(None, ge=0, description="Matches when the call asks for more tokens.")


class Rule(_Strict):
    id: str = Field(pattern=RULE_ID)
    effect: Effect
    match: RuleMatch = RuleMatch()
    reason: str | None = Field(None, description="Shown to the caller when this rule denies.")


class Grant(_Strict):
    tool: str = "*"
    adapter: str = "*"
    principal: str = "*"


class Override(_Strict):
    """Lifts a guard of an earlier layer (the shipped policy): explicit, named, with a reason."""

    id: str = Field(pattern=RULE_ID, description="The id of the guard to lift.")
    reason: str = Field(
        min_length=3, max_length=500, description="Why it is lifted; logged at start, shown in health and explain."
    )


class PolicyManifest(_Strict):
    guards: list[Rule] = Field(
        default_factory=list,
        description="Deny rules checked before every rule of every layer; a later layer lifts one only by `override`.",
    )
    rules: list[Rule] = Field(default_factory=list, description="Advanced rules; first match wins.")
    grants: list[Grant] = Field(default_factory=list, description="Legacy allow-list, consulted after the rules.")
    default: Effect = Field("allow", description="Decision for local adapters when no rule or grant matched.")
    default_remote: Effect = Field("deny", description="Decision for remote adapters when no rule or grant matched.")
    override: list[Override] = Field(
        default_factory=list, description="Guards of earlier layers (the shipped policy) lifted by id, with a reason."
    )

    @field_validator("guards")
    @classmethod
    def _guards_deny(cls, guards: list[Rule]) -> list[Rule]:
        allowing = [g.id for g in guards if g.effect != "deny"]
        if allowing:
            raise ValueError(f"guards only deny; put allow rules in `rules`: {', '.join(allowing)}")
        return guards

    @model_validator(mode="after")
    def _unique_ids(self) -> PolicyManifest:
        ids = [r.id for r in (*self.guards, *self.rules)]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"rule ids must be unique across guards and rules; repeated: {', '.join(dupes)}")
        return self


@dataclass(frozen=True, slots=True)
class PolicyLayer:
    name: str  # "shipped", "user"
    source: str  # the file it came from, for messages
    manifest: PolicyManifest


@dataclass(frozen=True, slots=True)
class Lifted:
    id: str
    reason: str
    by: str  # the file whose `override` lifted it


@dataclass(frozen=True)
class LayeredPolicy:
    """Policy layers in precedence order (shipped first); build with `layer_policies` to check overrides."""

    layers: tuple[PolicyLayer, ...]

    def lifted(self) -> tuple[Lifted, ...]:
        return tuple(Lifted(o.id, o.reason, layer.source) for layer in self.layers for o in layer.manifest.override)


def layer_policies(layers: Sequence[PolicyLayer]) -> LayeredPolicy:
    """Check the layers against each other: ids unique across files, overrides name an earlier layer's guard."""
    seen: dict[str, str] = {}
    guards: set[str] = set()
    for layer in layers:
        m = layer.manifest
        for n, o in enumerate(m.override):
            if o.id not in guards:
                known = ", ".join(sorted(guards)) or "none"
                raise ConfigError(
                    f"{layer.source}: override.{n}.id: no guard {o.id!r} in an earlier policy layer (guards: {known})"
                )
        for rule in (*m.guards, *m.rules):
            if rule.id in seen:
                raise ConfigError(
                    f"{layer.source}: rule id {rule.id!r} is already used by {seen[rule.id]}; "
                    "choose another id (a shipped guard is lifted with `override`, not redefined)"
                )
            seen[rule.id] = layer.source
        guards.update(g.id for g in m.guards)
    return LayeredPolicy(tuple(layers))


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    tool: str
    capability: PolicyCapability
    model: str  # canonical for its adapter when the router knows how the backend names models
    adapter: str
    privacy: Privacy
    principal: str
    texts: int = 0
    chars: int = 0
    documents: int = 0
    max_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    rule: str  # "rule:<id>", "grant:<n>", "default", "default-remote" or "policy_error"
    reason: str | None = None
    hint: str | None = None  # what would be allowed instead, when the rule's own limits say so

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"


@dataclass(frozen=True, slots=True)
class Entry:
    """One guard or rule in evaluation order, with the layer it came from."""

    stage: Literal["guard", "rule"]
    layer: PolicyLayer
    rule: Rule

    @property
    def label(self) -> str:
        return f"rule:{self.rule.id}"


def names_match(patterns: list[str] | None, value: str) -> bool:
    return patterns is None or any(fnmatchcase(value, p) for p in patterns)


def over_limit(limit: int | None, value: int) -> bool:
    return limit is None or value > limit


def rule_matches(m: RuleMatch, r: PolicyRequest, namer: ModelNamer | None = None) -> bool:
    return (
        names_match(m.tool, r.tool)
        and (m.capability is None or r.capability in m.capability)
        and (m.model is None or model_matches(m.model, r.adapter, r.model, namer))
        and names_match(m.adapter, r.adapter)
        and (m.privacy is None or r.privacy in m.privacy)
        and names_match(m.principal, r.principal)
        and over_limit(m.texts_over, r.texts)
        and over_limit(m.chars_over, r.chars)
        and over_limit(m.documents_over, r.documents)
        and over_limit(m.max_tokens_over, r.max_tokens)
    )


def model_matches(patterns: list[str], adapter: str, model: str, namer: ModelNamer | None = None) -> bool:
    """A pattern matches the model name; one with '/' also `adapter/model`; a literal also its canonical form."""
    for p in patterns:
        if fnmatchcase(model, p) or ("/" in p and fnmatchcase(f"{adapter}/{model}", p)):
            return True
        if namer is not None and not _GLOB_CHARS.intersection(p):
            prefix, sep, rest = p.partition("/")
            if namer(adapter, p) == model or (sep and prefix == adapter and namer(adapter, rest) == model):
                return True
    return False


def _layered(policy: PolicyManifest | LayeredPolicy) -> LayeredPolicy:
    if isinstance(policy, LayeredPolicy):
        return policy
    return LayeredPolicy((PolicyLayer("policy", "policy.json", policy),))


class PolicyEngine:
    def __init__(self, policy: PolicyManifest | LayeredPolicy, namer: ModelNamer | None = None) -> None:
        """`namer` spells a model the way its adapter does, so a rule on one spelling covers them all."""
        self.policy = _layered(policy)
        self.lifted = self.policy.lifted()
        lifted = {x.id for x in self.lifted}
        layers = self.policy.layers
        guards = [Entry("guard", la, g) for la in layers for g in la.manifest.guards if g.id not in lifted]
        rules = [Entry("rule", la, r) for la in reversed(layers) for r in la.manifest.rules]
        self.entries: tuple[Entry, ...] = (*guards, *rules)
        self.grants = tuple((la, g) for la in layers for g in la.manifest.grants)
        self.default = self._setting("default")
        self.default_remote = self._setting("default_remote")
        self.namer = self._cached(namer) if namer is not None else None
        for x in self.lifted:
            log.warning("policy guard %s is lifted by %s: %s", x.id, x.by, x.reason)

    def _setting(self, name: str) -> tuple[Effect, str]:
        """(value, layer) from the last layer whose file sets it; otherwise the built-in value."""
        for layer in reversed(self.policy.layers):
            if name in layer.manifest.model_fields_set:
                return getattr(layer.manifest, name), layer.name
        effect: Effect = PolicyManifest.model_fields[name].default
        return effect, "built-in"

    @staticmethod
    def _cached(namer: ModelNamer) -> ModelNamer:
        # rule patterns and adapter names both come from manifests, so the table stays small; the cap is a backstop
        table: dict[tuple[str, str], str] = {}

        def spelled(adapter: str, model: str) -> str:
            key = (adapter, model)
            found = table.get(key)
            if found is None:
                if len(table) >= _NAMER_CACHE_CAP:
                    table.clear()
                found = table[key] = namer(adapter, model)
            return found

        return spelled

    def evaluate(self, req: PolicyRequest) -> Decision:
        """The decision for one (call, candidate); never raises: a failure inside denies, as `policy_error`."""
        try:
            decision = self._decide(req)
            if decision.allowed or not decision.rule.startswith("rule:"):
                return decision
            return replace(decision, hint=self._size_hint(req, decision))
        except Exception:
            log.exception("policy evaluation failed for tool %s; denying", req.tool)
            return Decision("deny", POLICY_ERROR, "the policy could not be evaluated; the call is refused")

    def _decide(self, req: PolicyRequest) -> Decision:
        for entry in self.entries:
            if rule_matches(entry.rule.match, req, self.namer):
                return Decision(entry.rule.effect, entry.label, entry.rule.reason)
        for n, (_, g) in enumerate(self.grants):
            if grant_matches(g, req):
                return Decision("allow", f"grant:{n}")
        if req.privacy == "remote":
            return Decision(self.default_remote[0], "default-remote")
        return Decision(self.default[0], "default")

    def _size_hint(self, req: PolicyRequest, decision: Decision) -> str | None:
        """'at most N texts' when the same call, cut to the denying rule's size limits, would be allowed."""
        m = next(e.rule.match for e in self.entries if e.label == decision.rule)
        limits = {"texts": m.texts_over, "chars": m.chars_over, "documents": m.documents_over}
        limits["max_tokens"] = m.max_tokens_over
        cut = {k: v for k, v in limits.items() if v is not None and getattr(req, k) > v}
        smaller = replace(
            req,
            texts=cut.get("texts", req.texts),
            chars=cut.get("chars", req.chars),
            documents=cut.get("documents", req.documents),
            max_tokens=cut.get("max_tokens", req.max_tokens),
        )
        if not cut or not self._decide(smaller).allowed:
            return None
        words = {"texts": "texts", "chars": "characters", "documents": "documents", "max_tokens": "max_tokens"}
        return "at most " + ", ".join(f"{v} {words[k]}" for k, v in cut.items())

    def defined_in(self, guard: str) -> str:
        """The layer whose file defines guard `guard`."""
        return next(la.name for la in self.policy.layers if any(g.id == guard for g in la.manifest.guards))

    def summary(self) -> dict[str, Any]:
        """What health shows: the layers, the guards in force and the ones lifted (by whom, why)."""
        return {
            "layers": [{"name": la.name, "source": la.source} for la in self.policy.layers],
            "guards": [e.rule.id for e in self.entries if e.stage == "guard"],
            "lifted": [{"id": x.id, "reason": x.reason, "by": x.by} for x in self.lifted],
        }


def grant_matches(g: Grant, req: PolicyRequest) -> bool:
    pairs = ((req.tool, g.tool), (req.adapter, g.adapter), (req.principal, g.principal))
    return all(fnmatchcase(value, pattern) for value, pattern in pairs)
