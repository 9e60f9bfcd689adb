"""run_call(): the one path every model tool takes.

    1 limits        sizes and concurrency; over -> clear tool error, nothing else runs
    2 route+policy  candidates from the router, each checked by policy; none allowed -> denial (audited)
    3 audit start   durable before any backend is touched; fail-closed if it cannot write
    4 router        ordered attempts under deadlines, fallback on retryable errors
    5 finish        shielded from cancellation: audit finish, metrics, span end

Tools build a `Call` and hand over an `invoke` function; nothing in here knows
which tool or backend it is running.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
from opentelemetry.trace import Span

from adapters.base import Adapter
from adapters.types import Capability, Usage
from server.audit import evidence as evidence_of
from server.errors import GatewayError, InternalError, LimitError, NoRouteError, PolicyDeniedError
from server.policy import POLICY_ERROR, Decision, PolicyRequest
from server.principal import principal_for
from server.response_cache import CacheQuery
from server.router import Attempt, Candidate
from server.state import AppState
from server.telemetry import call_span, end_span_with

log = logging.getLogger("model_gateway.pipeline")
T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    tool: str
    capability: Capability
    model: str | None
    principal: str
    request: dict[str, Any]  # canonical request, hashed into audit evidence
    texts: int = 0
    chars: int = 0
    documents: int = 0
    max_tokens: int = 0
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T
    candidate: Candidate
    attempts: list[Attempt]
    decision: Decision


async def check_limits(state: AppState, call: Call) -> None:
    lim = state.settings.manifests.performance.limits
    if call.texts > lim.max_texts:
        raise LimitError(f"too many texts: {call.texts} > limit {lim.max_texts}; split the request")
    if call.documents > lim.max_documents:
        raise LimitError(f"too many documents: {call.documents} > limit {lim.max_documents}")
    if call.chars > lim.max_total_chars:
        raise LimitError(f"request too large: {call.chars} characters > limit {lim.max_total_chars}")
    if call.max_tokens > lim.max_tokens:
        raise LimitError(f"max_tokens {call.max_tokens} > limit {lim.max_tokens}")
    if state.in_flight >= state.settings.manifests.performance.concurrency.max_in_flight:
        raise LimitError("gateway busy: too many calls in flight; retry shortly")
    units = {"texts": call.texts + call.documents, "chars": call.chars, "max_tokens": call.max_tokens}
    await state.limiter.acquire(principal_for(call.principal), call.tool, units)


def _policy_request(call: Call, c: Candidate) -> PolicyRequest:
    return PolicyRequest(
        tool=call.tool,
        capability=call.capability,
        model=c.model,
        adapter=c.adapter,
        privacy=c.privacy,
        principal=principal_for(call.principal),
        texts=call.texts,
        chars=call.chars,
        documents=call.documents,
        max_tokens=call.max_tokens,
    )


def plan(state: AppState, call: Call) -> tuple[list[Candidate], list[Attempt], Decision]:
    """Usable, policy-allowed candidates in order, the skipped ones, and the deciding decision."""
    candidates = state.router.resolve(call.capability, call.model)
    usable, skipped = state.router.usable(call.capability, candidates)
    allowed: list[Candidate] = []
    first_allow: Decision | None = None
    first_deny: tuple[Candidate, Decision] | None = None
    for c in usable:
        decision = state.policy.evaluate(_policy_request(call, c))
        if decision.allowed:
            allowed.append(c)
            first_allow = first_allow or decision
        else:
            first_deny = first_deny or (c, decision)
            skipped.append(Attempt(c.adapter, c.model, "skipped", 0.0, f"denied by policy {decision.rule}"))
    if allowed:
        assert first_allow is not None
        return allowed, skipped, first_allow
    if first_deny is not None:
        c, decision = first_deny
        why = f" ({decision.reason})" if decision.reason else ""
        instead = [decision.hint] if decision.hint else []
        instead += [f"model {label}" for label in _allowed_elsewhere(state, call, c)]
        tail = f"; allowed instead: {'; '.join(instead)}" if instead else ""
        raise PolicyDeniedError(f"policy {decision.rule} denies {call.tool} on {c.label}{why}{tail}", decision.rule)
    reasons = "; ".join(f"{a.adapter}/{a.model}: {a.error}" for a in skipped)
    raise NoRouteError(f"no usable adapter for {call.capability}: {reasons}")


def _allowed_elsewhere(state: AppState, call: Call, denied: Candidate, limit: int = 3) -> list[str]:
    """Models the `models` tool already shows as routable that policy would let this same call use."""
    found: list[str] = []
    for name, s in state.discovery.snapshot.adapters.items():
        for m in s.models:
            c = Candidate(name, m.name, s.privacy)
            if call.capability not in m.capabilities or (name, m.name) == (denied.adapter, denied.model):
                continue
            if (
                state.router.skip_reason(call.capability, c) is None
                and state.policy.evaluate(_policy_request(call, c)).allowed
            ):
                found.append(c.label)
            if len(found) >= limit:
                return found
    return found


def _audit_base(call: Call) -> dict[str, Any]:
    principal = principal_for(call.principal)
    return {"call_id": call.call_id, "principal": principal, "tool": call.tool, "capability": call.capability}


async def _audit(state: AppState, event: str, body: dict[str, Any]) -> None:
    # a start record is made durable with its call's finish record, before the result is returned
    await state.audit.write({"event": event, **body}, durable=event != "start", alone=state.in_flight == 0)
    state.metrics.child(state.metrics.audit_records, event).inc()


async def run_call(
    state: AppState,
    call: Call,
    invoke: Callable[[Adapter, Candidate], Awaitable[T]],
    deadline_s: float,
    evidence: Callable[[T], Any],
) -> Outcome[T]:
    started = time.perf_counter()
    with call_span(call.tool, call.capability, call.model) as span:
        try:
            await check_limits(state, call)
        except LimitError as exc:
            # refused before routing: audited as a denial by the limit that refused it
            limit = {"decision": "deny", "rule": exc.code, "model": call.model, "outcome": "limited"}
            await _audit(state, "deny", {**_audit_base(call), **limit, "request_sha256": _ev(call.request)})
            _finish(state, call, span, "none", "limited", started, exc.code)
            raise
        candidates, skipped, decision = await _admit(state, call, started, span)
        return await _execute(state, call, (candidates, skipped, decision), invoke, deadline_s, evidence, started, span)


async def _admit(
    state: AppState, call: Call, started: float, span: Span
) -> tuple[list[Candidate], list[Attempt], Decision]:
    """Route and policy; a denial is audited; admission is audited before any backend is touched."""
    try:
        candidates, skipped, decision = plan(state, call)
    except PolicyDeniedError as exc:
        state.metrics.policy_denials.labels(exc.rule).inc()
        deny = {"decision": "deny", "rule": exc.rule, "model": call.model, "request_sha256": _ev(call.request)}
        deny["outcome"] = "policy_error" if exc.rule == POLICY_ERROR else "denied"
        await _audit(state, "deny", {**_audit_base(call), **deny})
        _finish(state, call, span, "none", "denied", started, exc.code)
        raise
    except GatewayError as exc:
        _finish(state, call, span, "none", "error", started, exc.code)
        raise
    start: dict[str, Any] = {
        "decision": "allow",
        "rule": decision.rule,
        "model": call.model,
        "request_sha256": _ev(call.request),
    }
    start["candidates"] = [c.label for c in candidates]
    if state.settings.manifests.performance.audit.capture_content:
        start["request"] = call.request  # opted in by the manifest; still passes the redactor
    await _audit(state, "start", {**_audit_base(call), **start})
    return candidates, skipped, decision


async def _execute(
    state: AppState,
    call: Call,
    admitted: tuple[list[Candidate], list[Attempt], Decision],
    invoke: Callable[[Adapter, Candidate], Awaitable[T]],
    deadline_s: float,
    evidence: Callable[[T], Any],
    started: float,
    span: Span,
) -> Outcome[T]:
    candidates, skipped, decision = admitted
    attempts: list[Attempt] = list(skipped)
    state.in_flight += 1
    state.metrics.in_flight.inc()
    outcome, error, value, chosen, cache = "error", "internal", None, None, None
    try:
        # response cache (server/response_cache.py): a hit answers without routing; a served answer is stored
        query = CacheQuery(call.tool, call.capability, principal_for(call.principal), call.request)
        route = partial(state.router.execute, call.capability, candidates, invoke, deadline_s, attempts)
        value, chosen, cache = await state.response_cache.serve(query, candidates, attempts, route)
        outcome, error = "ok", ""
        return Outcome(value, chosen, attempts, decision)
    except GatewayError as exc:
        error = exc.code
        raise
    except anyio.get_cancelled_exc_class():
        outcome, error = "cancelled", "cancelled"
        raise
    except Exception as exc:
        log.exception("unexpected failure in %s", call.tool)
        raise InternalError(f"internal error in {call.tool}; the gateway is still serving") from exc
    finally:
        state.in_flight -= 1
        state.metrics.in_flight.dec()
        with anyio.CancelScope(shield=True):
            adapter = chosen.adapter if chosen else (attempts[-1].adapter if attempts else "none")
            _attempt_metrics(state, call, attempts)
            usage = _usage(value)
            _finish(state, call, span, adapter, outcome, started, error, usage)
            finish = {
                "adapter": adapter,
                "model": chosen.model if chosen else call.model,
                "outcome": outcome,
                "error": error or None,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "attempts": [[a.adapter, a.outcome] for a in attempts],
                "usage": usage,
                "response_sha256": _ev(evidence(value)) if value is not None else None,
            }
            if cache is not None:
                finish["cache"] = cache
            await _audit(state, "finish", {**_audit_base(call), **finish})


def _usage(value: Any) -> dict[str, int] | None:
    usage = getattr(value, "usage", None)
    if not isinstance(usage, Usage):
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def _ev(value: Any) -> str:
    return evidence_of(value)


def _attempt_metrics(state: AppState, call: Call, attempts: list[Attempt]) -> None:
    prev: Attempt | None = None
    for a in attempts:
        if a.outcome != "skipped":
            m = state.metrics
            m.child(m.attempt_duration, a.adapter, call.capability, a.outcome).observe(a.latency_ms / 1000)
        if prev is not None and prev.outcome in ("failed", "skipped"):
            state.metrics.fallbacks.labels(prev.adapter, a.adapter, prev.outcome).inc()
        prev = a


def _finish(
    state: AppState,
    call: Call,
    span: Span,
    adapter: str,
    outcome: str,
    started: float,
    error: str,
    usage: dict[str, int] | None = None,
) -> None:
    """Metrics, span attributes and the one debug log line every call gets."""
    elapsed = time.perf_counter() - started
    m = state.metrics
    m.child(m.tool_duration, call.tool, adapter, outcome).observe(elapsed)
    m.child(m.calls, call.tool, outcome).inc()
    if error:
        state.metrics.errors.labels(call.tool, error).inc()
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage["input_tokens"])
        span.set_attribute("gen_ai.usage.output_tokens", usage["output_tokens"])
    span.set_attribute("model_gateway.adapter", adapter)
    end_span_with(span, outcome, error or None)
    log.debug(
        "call",
        extra={
            "call_id": call.call_id,
            "tool": call.tool,
            "adapter": adapter,
            "outcome": outcome,
            "error": error or None,
            "latency_ms": round(elapsed * 1000, 3),
        },
    )
