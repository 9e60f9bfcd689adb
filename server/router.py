"""Model or alias -> ordered candidates; fallback across them under deadlines.

Candidates = route order ∩ routable in the snapshot ∩ declares the capability
∩ allowed by the call's privacy mode ∩ breaker not open. Each attempt runs under
a deadline and goes through the capability's entry in server/dispatch.py; a
retryable failure moves on to the next candidate, a non-retryable one stops
and is returned. When every candidate fails, the error lists each one and why
(the tensorzero habit). Provider text is redacted whole before it is cut
short for `route[]` and error messages, so a secret never straddles the cut.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio

from adapters.base import Adapter
from adapters.errors import AdapterError, AdapterTimeoutError, safe_detail
from adapters.naming import canonical_model
from adapters.types import Capability, Privacy
from server.breaker import Breaker
from server.discovery import AdapterStatus, Discovery
from server.dispatch import DISPATCH, AdapterRequest
from server.errors import AllCandidatesFailedError, NoRouteError, UpstreamRejectedError
from server.manifests import RoutesManifest
from server.telemetry import attempt_span, end_span_with

log = logging.getLogger("model_gateway.router")
MAX_LISTED = 12
ATTEMPT_DETAIL_CHARS = 300
SUMMARY_DETAIL_CHARS = 160


@dataclass(frozen=True, slots=True)
class Candidate:
    adapter: str
    model: str
    privacy: Privacy

    @property
    def label(self) -> str:
        return f"{self.adapter}/{self.model}"


@dataclass(frozen=True, slots=True)
class Attempt:
    adapter: str
    model: str
    outcome: Literal["ok", "failed", "rejected", "skipped", "cached"]
    latency_ms: float
    error: str | None = None

    def public(self) -> dict[str, Any]:
        """The `route[]` entry a result publishes."""
        return {
            "adapter": self.adapter,
            "model": self.model,
            "outcome": self.outcome,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }


class Routable(Protocol):
    """What the router needs from a call: its capability and the adapter request for one candidate's model."""

    @property
    def capability(self) -> Capability: ...

    def adapter_request(self, model: str) -> AdapterRequest: ...


@dataclass(frozen=True, slots=True)
class AttemptRules:
    """How attempts run.

    `redact` masks secrets in provider text (whole, before it is cut short); `unprobed_s` is the most an
    attempt may spend on an adapter whose first probe has not answered while a later candidate is known
    to be up (None: the full deadline).
    """

    redact: Callable[[str], str] = str
    unprobed_s: float | None = None


class Router:
    def __init__(
        self,
        adapters: Mapping[str, Adapter],
        routes: RoutesManifest,
        discovery: Discovery,
        breakers: Mapping[str, Breaker],
        model_aliases: Mapping[str, Mapping[str, str]] | None = None,
        rules: AttemptRules = AttemptRules(),
    ) -> None:
        """`model_aliases`: adapter -> {alias: model}, the `aliases` its manifest declares per model."""
        self.adapters = dict(adapters)
        self.model_aliases = {name: dict(aliases) for name, aliases in (model_aliases or {}).items()}
        self.routes = routes
        self.discovery = discovery
        self.breakers = dict(breakers)
        self.rules = rules

    # --- resolution -------------------------------------------------------------

    def _status(self, adapter: str) -> AdapterStatus | None:
        return self.discovery.snapshot.adapters.get(adapter)

    def canonical(self, adapter: str, model: str) -> str:
        """`model` as `adapter`'s backend names it: every spelling of one model routes, and is judged, as one."""
        return canonical_model(self.adapters.get(adapter), model)

    def _model_for(self, adapter: str, capability: Capability) -> str | None:
        status = self._status(adapter)
        if status is None:
            return None
        # A model its server did not list is the default only when no declared model is listed: then the
        # server's own answer (e.g. "model not found, try pulling it") says what is wrong.
        serving = [m.name for m in status.models if capability in m.capabilities]
        return next((n for n in serving if n not in status.unlisted), serving[0] if serving else None)

    def _expand(self, target: str, capability: Capability) -> list[Candidate]:
        adapter, sep, model = target.partition("/")
        status = self._status(adapter)
        if status is None:
            return []
        chosen = self.canonical(adapter, model) if sep else self._model_for(adapter, capability)
        return [Candidate(adapter, chosen, status.privacy)] if chosen else []

    def _by_model_name(self, name: str) -> list[Candidate]:
        found = []
        for adapter_name in self._route_order():
            status = self._status(adapter_name)
            canonical = self.canonical(adapter_name, name)
            if status is not None and any(m.name == canonical for m in status.models):
                found.append(Candidate(adapter_name, canonical, status.privacy))
        for adapter_name, status in self.discovery.snapshot.adapters.items():
            aliases = self.model_aliases.get(adapter_name, {})
            if name in aliases and all(c.adapter != adapter_name for c in found):
                found.append(Candidate(adapter_name, self.canonical(adapter_name, aliases[name]), status.privacy))
        return found

    def _route_order(self) -> list[str]:
        order: list[str] = []
        for targets in self.routes.routes.values():
            for t in targets:
                name = t.partition("/")[0]
                if name not in order:
                    order.append(name)
        return order + [n for n in self.adapters if n not in order]

    def resolve(self, capability: Capability, model: str | None) -> list[Candidate]:
        """Every candidate the name can mean, in route order, before health filtering."""
        if model is None or model == "default":
            targets = self.routes.routes.get(capability) or []
            found = [c for t in targets for c in self._expand(t, capability)]
            # no configured route target: any adapter that serves the capability, in manifest order
            found = found or [c for name in self.adapters for c in self._expand(name, capability)]
        elif model in self.routes.aliases:
            found = [c for t in self.routes.aliases[model] for c in self._expand(t, capability)]
        elif "/" in model and model.partition("/")[0] in self.adapters:
            found = self._expand(model, capability)
        else:
            found = self._by_model_name(model)
        if not found:
            raise NoRouteError(self._unknown_message(capability, model))
        return _dedupe(found)

    def _unknown_message(self, capability: Capability, model: str | None) -> str:
        if model is not None and "/" in model and model.partition("/")[0] not in self.adapters:
            prefix = model.partition("/")[0]
            if not any(m.name == model for s in self.discovery.snapshot.adapters.values() for m in s.models):
                names = ", ".join(sorted(self.adapters)) or "none configured"
                shown = f"{safe_detail(prefix, 80)!r} in model {safe_detail(model, 200)!r}"
                return f"unknown adapter {shown}; adapters: {names}"
        known = self.available_models(capability)
        listed = ", ".join(known[:MAX_LISTED]) + (" …" if len(known) > MAX_LISTED else "")
        what = f"model {safe_detail(model, 200)!r}" if model else "a default model"
        return f"no adapter serves {what} for {capability}; available: {listed or 'none'}"

    def available_models(self, capability: Capability) -> list[str]:
        names = list(self.routes.aliases)
        for adapter, status in self.discovery.snapshot.adapters.items():
            names += [f"{adapter}/{m.name}" for m in status.models if capability in m.capabilities]
        return names

    # --- filtering --------------------------------------------------------------

    def skip_reason(self, capability: Capability, c: Candidate, privacy: bool = False) -> str | None:
        """Why this candidate cannot serve the call now, or None. `privacy`: the call's privacy mode."""
        status = self._status(c.adapter)
        if status is None:
            return "not configured"
        if privacy and c.privacy == "remote":
            return "excluded by privacy mode"
        if not status.routable:
            return f"down: {status.error or 'probe failed'}"
        declared = next((m for m in status.models if m.name == c.model), None)
        if declared is not None and capability not in declared.capabilities:
            return f"model does not serve {capability}"
        if declared is None and capability not in status.capabilities and status.models:
            return f"adapter does not serve {capability}"
        breaker = self.breakers.get(c.adapter)
        if breaker is not None and breaker.blocking:
            return "circuit breaker open"
        return None

    def usable(
        self, capability: Capability, candidates: list[Candidate], privacy: bool = False
    ) -> tuple[list[Candidate], list[Attempt]]:
        ok, skipped = [], []
        for c in candidates:
            reason = self.skip_reason(capability, c, privacy)
            if reason is None:
                ok.append(c)
            else:
                skipped.append(Attempt(c.adapter, c.model, "skipped", 0.0, reason))
        return ok, skipped

    # --- execution --------------------------------------------------------------

    async def execute(
        self, call: Routable, candidates: list[Candidate], deadline_s: float, attempts: list[Attempt]
    ) -> tuple[Any, Candidate]:
        """Try candidates in order; `attempts` receives one entry per candidate touched."""
        for i, c in enumerate(candidates):
            breaker = self.breakers.get(c.adapter)
            if breaker is not None and not breaker.allow():
                attempts.append(Attempt(c.adapter, c.model, "skipped", 0.0, "circuit breaker open"))
                continue
            started = time.perf_counter()
            try:
                outcome = await self._attempt(call, c, self._budget(c, candidates[i + 1 :], deadline_s))
            except BaseException:
                if breaker is not None:
                    breaker.abandon()  # cancelled: neither a success nor a failure of the backend
                raise
            latency = round((time.perf_counter() - started) * 1000, 3)
            if isinstance(outcome, _Success):
                attempts.append(Attempt(c.adapter, c.model, "ok", latency))
                self._record(c.adapter, ok=True)
                return outcome.value, c
            detail = self._detail(outcome.message, ATTEMPT_DETAIL_CHARS)
            if not outcome.retryable:
                attempts.append(Attempt(c.adapter, c.model, "rejected", latency, detail))
                self._record(c.adapter, ok=True)  # the backend answered: it is alive
                raise UpstreamRejectedError(f"{c.label} rejected the request: {detail}")
            attempts.append(Attempt(c.adapter, c.model, "failed", latency, detail))
            self._record(c.adapter, ok=False)
        raise AllCandidatesFailedError(_all_failed_message(call.capability, attempts))

    def _detail(self, text: str, limit: int) -> str:
        """Redact the whole text, then cut it: a secret never straddles the cut."""
        return safe_detail(self.rules.redact(text), limit)

    def _budget(self, c: Candidate, later: list[Candidate], deadline_s: float) -> float:
        """The full deadline, unless this adapter's probe has not answered yet and a later one is known up."""
        budget = self.rules.unprobed_s
        if budget is None or deadline_s <= budget:
            return deadline_s
        status = self._status(c.adapter)
        if status is None or status.status != "unknown":
            return deadline_s
        if any((s := self._status(n.adapter)) is not None and s.status == "up" for n in later):
            return budget
        return deadline_s

    async def _attempt(self, call: Routable, c: Candidate, deadline_s: float) -> _Success | AdapterError:
        adapter = self.adapters[c.adapter]
        with attempt_span(c.adapter, adapter.info.kind, call.capability, c.model) as span:
            result = await self._call(adapter, call, c, deadline_s)
            if isinstance(result, AdapterError):
                end_span_with(span, "failed" if result.retryable else "rejected", type(result).__name__)
            else:
                end_span_with(span, "ok")
            return result

    async def _call(self, adapter: Adapter, call: Routable, c: Candidate, deadline_s: float) -> _Success | AdapterError:
        dispatch = DISPATCH[call.capability]
        try:
            with attempt_deadline(deadline_s):
                return _Success(await dispatch(adapter, call.adapter_request(c.model)))
            return AdapterTimeoutError(f"timed out after {deadline_s:g}s")  # reached only when the deadline hit
        except TimeoutError:
            return AdapterTimeoutError(f"timed out after {deadline_s:g}s")
        except AdapterError as exc:
            return exc
        except Exception as exc:  # an adapter bug must not take the call path down
            log.exception("adapter %s raised unexpectedly", c.adapter)
            return AdapterError(f"internal adapter error ({type(exc).__name__})", retryable=True)

    def _record(self, adapter: str, ok: bool) -> None:
        breaker = self.breakers.get(adapter)
        if breaker is not None:
            breaker.record(ok)
        self.discovery.observe_call(adapter, ok)


def attempt_deadline(seconds: float) -> anyio.CancelScope:
    """The one deadline an attempt runs under: a bare cancel scope (fail_after() adds a generator and a lookup)."""
    return anyio.CancelScope(deadline=anyio.current_time() + seconds)


@dataclass(frozen=True, slots=True)
class _Success:
    value: Any


def _dedupe(candidates: list[Candidate]) -> list[Candidate]:
    seen: set[tuple[str, str]] = set()
    out = []
    for c in candidates:
        if (c.adapter, c.model) not in seen:
            seen.add((c.adapter, c.model))
            out.append(c)
    return out


def _all_failed_message(capability: Capability, attempts: list[Attempt]) -> str:
    # attempt errors were redacted whole when they were recorded; this only shortens them
    parts = [
        f"{a.adapter}/{a.model}: {a.outcome}: {safe_detail(a.error or '', SUMMARY_DETAIL_CHARS)}" for a in attempts
    ]
    return f"every candidate for {capability} failed — " + "; ".join(parts)
