"""Policy: which calls may run on which adapter.

Evaluation order is fixed:
  1. advanced rules, in file order; the first rule whose every condition
     matches decides (allow or deny);
  2. legacy grants: an allow-list of tool x adapter x principal; any match allows;
  3. the default: `default_remote` for adapters of privacy class "remote",
     `default` for the rest.

The pipeline asks once per route candidate, so conditions on adapter and
privacy class see the concrete backend a call would reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters.types import Capability, Privacy

Effect = Literal["allow", "deny"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleMatch(_Strict):
    """Every condition given must hold; lists match any element; names accept shell globs."""

    tool: list[str] | None = None
    capability: list[Capability] | None = None
    model: list[str] | None = None
    adapter: list[str] | None = None
    privacy: list[Privacy] | None = None
    principal: list[str] | None = None
    texts_over: int | None = Field(None, ge=0, description="Matches when the call carries more texts than this.")
    chars_over: int | None = Field(None, ge=0, description="Matches when the call's total characters exceed this.")
    documents_over: int | None = Field(None, ge=0)
    max_tokens_over: int | None = Field(None, ge=0)


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
    default: Effect = "allow"
    default_remote: Effect = "deny"


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    tool: str
    capability: Capability
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
    rule: str  # "rule:<id>", "grant:<n>", "default" or "default-remote"
    reason: str | None = None

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
