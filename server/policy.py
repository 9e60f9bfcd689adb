"""Policy: which calls may run on which adapter.

Evaluation order is fixed:
  1. advanced rules, in file order; the first rule whose every condition
     matches decides (allow or deny);
  2. legacy grants: an allow-list of tool x adapter x principal; any match allows;
  3. the default: `default_remote` for adapters of privacy class "remote",
     `default` for the rest.

The pipeline asks once per route candidate, so conditions on adapter and
privacy class see the concrete backend a call would reach. The principal is
the local user on stdio and the authenticated token's subject on HTTP.

Fail closed: an error inside evaluation denies the call with rule
`policy_error` (and the pipeline audits it); a policy file that does not
validate stops the server at start, naming the file and field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.types import Privacy

log = logging.getLogger("model_gateway.policy")

Effect = Literal["allow", "deny"]
# "admin" is the gateway's own controls (the `privacy` tool), so rules can govern them like model calls
PolicyCapability = Literal["chat", "embed", "rerank", "admin"]
POLICY_ERROR = "policy_error"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleMatch(_Strict):
    """Every condition given must hold; lists match any element; names accept shell globs."""

    tool: list[str] | None = None
    capability: list[PolicyCapability] | None = None
    model: list[str] | None = None
    adapter: list[str] | None = None
    privacy: list[Privacy] | None = None
    principal: list[str] | None = None
    texts_over: int | None = Field(None, ge=0, description="Matches when the call carries more texts than this.")
    chars_over: int | None = Field(None, ge=0, description="Matches when the call's total characters exceed this.")
    documents_over: int | None = Field(None, ge=0, description="Matches when the call carries more documents.")
    max_tokens_over: int | None = Field(None, ge=0, description="Matches when the call asks for more tokens.")


class Rule(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    effect: Effect
    match: RuleMatch = RuleMatch()
    reason: str | None = Field(None, description="Shown to the caller when this rule denies.")


class Grant(_Strict):
    tool: str = "*"
    adapter: str = "*"
    principal: str = "*"


class PolicyManifest(_Strict):
    rules: list[Rule] = Field(default_factory=list, description="Advanced rules; first match wins.")
    grants: list[Grant] = Field(default_factory=list, description="Legacy allow-list, consulted after the rules.")
    default: Effect = Field("allow", description="Decision for local adapters when no rule or grant matched.")
    default_remote: Effect = Field("deny", description="Decision for remote adapters when no rule or grant matched.")

    @model_validator(mode="after")
    def _unique_ids(self) -> PolicyManifest:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"rule ids must be unique; repeated: {', '.join(dupes)}")
        return self


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    tool: str
    capability: PolicyCapability
    model: str
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


def _names(patterns: list[str] | None, value: str) -> bool:
    return patterns is None or any(fnmatchcase(value, p) for p in patterns)


def _over(limit: int | None, value: int) -> bool:
    return limit is None or value > limit


def rule_matches(m: RuleMatch, r: PolicyRequest) -> bool:
    return (
        _names(m.tool, r.tool)
        and (m.capability is None or r.capability in m.capability)
        and _names(m.model, r.model)
        and _names(m.adapter, r.adapter)
        and (m.privacy is None or r.privacy in m.privacy)
        and _names(m.principal, r.principal)
        and _over(m.texts_over, r.texts)
        and _over(m.chars_over, r.chars)
        and _over(m.documents_over, r.documents)
        and _over(m.max_tokens_over, r.max_tokens)
    )


class PolicyEngine:
    def __init__(self, manifest: PolicyManifest) -> None:
        self.manifest = manifest

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
        for rule in self.manifest.rules:
            if rule_matches(rule.match, req):
                return Decision(rule.effect, f"rule:{rule.id}", rule.reason)
        for n, g in enumerate(self.manifest.grants):
            pairs = ((req.tool, g.tool), (req.adapter, g.adapter), (req.principal, g.principal))
            if all(fnmatchcase(value, pattern) for value, pattern in pairs):
                return Decision("allow", f"grant:{n}")
        if req.privacy == "remote":
            return Decision(self.manifest.default_remote, "default-remote")
        return Decision(self.manifest.default, "default")

    def _size_hint(self, req: PolicyRequest, decision: Decision) -> str | None:
        """'at most N texts' when the same call, cut to the denying rule's size limits, would be allowed."""
        rule = next(r for r in self.manifest.rules if f"rule:{r.id}" == decision.rule)
        m = rule.match
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
