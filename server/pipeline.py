"""run_call(state, call): the one path every model tool call takes.

    1 limits        sizes, then the rate limiter (awaited: its buckets may be in Redis); over -> tool error
    2 route+policy  candidates from the router, each checked by policy; none allowed -> denial
    3 audit start   written before any backend is touched; fail-closed if it cannot write
    4 cache         embed/rerank unless switched off, never in privacy mode: a stored answer is a hit
    5 router        ordered attempts under deadlines, fallback on retryable errors; a miss's answer is stored
    6 finish        never cut by cancellation: metrics, span end, audit finish (with `cache`: hit | miss),
                    written at once when the sink need not wait, else shielded

A hit has passed 1-3 like any call, is published with a `cached` route entry
under the candidate it was stored for, and its finish record carries the same
evidence hash as the served answer it repeats.

A call refused at 1-2 (too big, rate limited, denied, unroutable) leaves one
compact `deny` record and is counted with its outcome; so are calls whose
arguments did not validate (`refuse_arguments`). The `busy` answer costs less
(server/shedding.py). Nothing in here knows which tool or backend it runs: the
call's type says (server/calls.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from opentelemetry.trace import Span

from server.audit import evidence
from server.calls import Out, ToolCall, new_call_id
from server.errors import GatewayError, InternalError, LimitError, NoRouteError, PolicyDeniedError
from server.limits import Size, check
from server.policy import POLICY_ERROR, Decision, PolicyRequest
from server.response_cache import CacheOutcome, request_digest
from server.router import Attempt, Candidate
from server.schemas import _Result
from server.state import AppState
from server.telemetry import call_span, end_span_with

log = logging.getLogger("model_gateway.pipeline")


@dataclass(eq=False, slots=True)
class _Run:
    """One call's bookkeeping: what it is, when it started, what it touched."""

    state: AppState
    call: ToolCall[Any]
    size: Size
    span: Span
    started: float = field(default_factory=time.perf_counter)
    attempts: list[Attempt] = field(default_factory=list)
    cache: CacheOutcome | None = None  # set when the response cache holds this kind of call

    def base(self) -> dict[str, Any]:
        c = self.call
        return {
            "call_id": c.caller.call_id,
            "principal": c.caller.principal,
            "tool": c.tool,
            "capability": c.capability,
        }

    async def refuse(self, exc: GatewayError, outcome: str, rule: str) -> None:
        """Audit and count a call refused before admission (no input text: its hash only)."""
        record: dict[str, Any] = {"decision": "deny", "rule": rule, "model": self.call.model, "outcome": outcome}
        record["request_sha256"] = evidence(self.call.canonical())
        await audit(self.state, "deny", {**self.base(), **record})
        self.observe("none", "denied" if outcome in ("denied", "policy_error") else outcome, exc.code)

    def observe(self, adapter: str, outcome: str, error: str, usage: dict[str, int] | None = None) -> None:
        """Metrics, span attributes and the one debug log line every call gets."""
        elapsed = time.perf_counter() - self.started
        m, tool = self.state.metrics, self.call.tool
        m.child(m.tool_duration, tool, adapter, outcome).observe(elapsed)
        m.child(m.calls, tool, outcome).inc()
        if error:
            m.child(m.errors, tool, error).inc()
        if usage is not None:
            self.span.set_attribute("gen_ai.usage.input_tokens", usage["input_tokens"])
            self.span.set_attribute("gen_ai.usage.output_tokens", usage["output_tokens"])
        self.span.set_attribute("model_gateway.adapter", adapter)
        end_span_with(self.span, outcome, error or None)
        if log.isEnabledFor(logging.DEBUG):
            extra: dict[str, Any] = {"call_id": self.call.caller.call_id, "tool": tool, "adapter": adapter}
            extra["outcome"] = outcome
            extra |= {"error": error or None, "latency_ms": round(elapsed * 1000, 3)}
            log.debug("call", extra=extra)


async def audit(state: AppState, event: str, body: dict[str, Any]) -> None:
    # a start record is made durable with its call's finish record, before the result is returned
    await state.audit.write({"event": event, **body}, durable=event != "start", alone=state.in_flight <= 1)
    state.metrics.child(state.metrics.audit_records, event).inc()


def audit_now(state: AppState, event: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """`audit()` when the sink can write (and sync) without waiting; otherwise the record, for `audit()`."""
    record = {"event": event, **body}
    if not state.audit.write_now(record, event != "start", alone=state.in_flight <= 1):
        return record
    state.metrics.child(state.metrics.audit_records, event).inc()
    return None


async def run_call(state: AppState, call: ToolCall[Out]) -> Out:
    with call_span(call.tool, call.capability, call.model) as span:
        run = _Run(state, call, call.size(), span)
        candidates = await _admit(run)
        return await _execute(run, candidates)


async def _admit(run: _Run) -> list[Candidate]:
    """Limits, rate limits, routing and policy; refusals are audited; admission is audited before any backend."""
    state, call = run.state, run.call
    try:
        check(state.settings.manifests.performance.limits, run.size)
        await state.limiter.acquire(call.caller.principal, call.tool, run.size.units())
        candidates, decision = plan(state, call, run.size, run.attempts)
    except LimitError as exc:
        await run.refuse(exc, "limited", exc.code)
        raise
    except PolicyDeniedError as exc:
        state.metrics.policy_denials.labels(exc.rule).inc()
        await run.refuse(exc, "policy_error" if exc.rule == POLICY_ERROR else "denied", exc.rule)
        raise
    except NoRouteError as exc:
        await run.refuse(exc, "unroutable", exc.code)
        raise
    start: dict[str, Any] = {"decision": "allow", "rule": decision.rule, "model": call.model}
    start["request_sha256"] = evidence(call.canonical())
    start["candidates"] = [c.label for c in candidates]
    if state.settings.manifests.performance.audit.capture_content:
        start["request"] = call.canonical()  # opted in by the manifest; still passes the redactor
    record = audit_now(state, "start", {**run.base(), **start})
    if record is not None:
        await audit(state, "start", record)
    return candidates


def _policy_request(call: ToolCall[Any], size: Size, c: Candidate) -> PolicyRequest:
    return PolicyRequest(
        tool=call.tool,
        capability=call.capability,
        model=c.model,
        adapter=c.adapter,
        privacy=c.privacy,
        principal=call.caller.principal,
        texts=size.texts,
        chars=size.chars,
        documents=size.documents,
        max_tokens=size.max_tokens,
    )


def plan(state: AppState, call: ToolCall[Any], size: Size, skipped: list[Attempt]) -> tuple[list[Candidate], Decision]:
    """Usable, policy-allowed candidates in order and the deciding decision; `skipped` gets the others."""
    resolved = state.router.resolve(call.capability, call.model)
    usable, passed_over = state.router.usable(call.capability, resolved, call.caller.privacy)
    skipped += passed_over
    allowed: list[Candidate] = []
    first_allow: Decision | None = None
    first_deny: tuple[Candidate, Decision] | None = None
    for c in usable:
        decision = state.policy.evaluate(_policy_request(call, size, c))
        if decision.allowed:
            allowed.append(c)
            first_allow = first_allow or decision
        else:
            first_deny = first_deny or (c, decision)
            skipped.append(Attempt(c.adapter, c.model, "skipped", 0.0, f"denied by policy {decision.rule}"))
    if allowed and first_allow is not None:
        return allowed, first_allow
    if first_deny is not None:
        raise _denial(state, call, size, *first_deny)
    reasons = "; ".join(f"{a.adapter}/{a.model}: {a.error}" for a in skipped)
    raise NoRouteError(f"no usable adapter for {call.capability}: {reasons}")


def _denial(state: AppState, call: ToolCall[Any], size: Size, c: Candidate, decision: Decision) -> PolicyDeniedError:
    why = f" ({decision.reason})" if decision.reason else ""
    instead = [decision.hint] if decision.hint else []
    instead += [f"model {label}" for label in _allowed_elsewhere(state, call, size, c)]
    tail = f"; allowed instead: {'; '.join(instead)}" if instead else ""
    return PolicyDeniedError(f"policy {decision.rule} denies {call.tool} on {c.label}{why}{tail}", decision.rule)


def _allowed_elsewhere(
    state: AppState, call: ToolCall[Any], size: Size, denied: Candidate, limit: int = 3
) -> list[str]:
    """Models the `models` tool already shows as routable that policy would let this same call use."""
    found: list[str] = []
    for name, s in state.discovery.snapshot.adapters.items():
        for m in s.models:
            c = Candidate(name, m.name, s.privacy)
            if call.capability not in m.capabilities or (name, m.name) == (denied.adapter, denied.model):
                continue
            if (
                state.router.skip_reason(call.capability, c, call.caller.privacy) is None
                and state.policy.evaluate(_policy_request(call, size, c)).allowed
            ):
                found.append(c.label)
            if len(found) >= limit:
                return found
    return found


async def _execute(run: _Run, candidates: list[Candidate]) -> Out:
    state, call = run.state, run.call
    outcome, error, result, chosen = "error", "internal", None, None
    try:
        deadline_s = call.deadline_s(state.settings.manifests.performance.deadlines)
        value, chosen = await _serve(run, candidates, deadline_s)
        result = call.output(value, chosen.adapter, run.attempts)
        outcome, error = "ok", ""
        return result  # type: ignore[no-any-return]
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
        record = audit_now(run.state, "finish", _finish(run, chosen, outcome, error, result))
        if record is not None:  # the sink has to wait (lock, thread or group sync): cancellation must not cut it
            with anyio.CancelScope(shield=True):
                await audit(run.state, "finish", record)


async def _serve(run: _Run, candidates: list[Candidate], deadline_s: float) -> tuple[Any, Candidate]:
    """Steps 4-5: the first candidate's stored answer, else the router's (kept for the next such call)."""
    state, call, cache = run.state, run.call, run.state.response_cache
    if not cache.holds(call):
        return await state.router.execute(call, candidates, deadline_s, run.attempts)
    first, started, digest = candidates[0], time.perf_counter(), request_digest(call)
    found = await cache.lookup(call, first, digest)
    run.cache = "miss" if found is None else "hit"
    if found is not None:
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        run.attempts.append(Attempt(first.adapter, first.model, "cached", elapsed_ms))
        return found, first
    value, chosen = await state.router.execute(call, candidates, deadline_s, run.attempts)
    await cache.keep(call, chosen, value, digest)
    return value, chosen


def _finish(run: _Run, chosen: Candidate | None, outcome: str, error: str, result: _Result | None) -> dict[str, Any]:
    """Metrics and the span for the call; its finish record, to be written."""
    attempts = run.attempts
    adapter = chosen.adapter if chosen else (attempts[-1].adapter if attempts else "none")
    _attempt_metrics(run)
    usage: dict[str, int] | None = getattr(result, "usage", None)
    run.observe(adapter, outcome, error, usage)
    finish = {
        "adapter": adapter,
        "model": chosen.model if chosen else run.call.model,
        "outcome": outcome,
        "error": error or None,
        "latency_ms": round((time.perf_counter() - run.started) * 1000, 3),
        "attempts": [[a.adapter, a.outcome] for a in attempts],
        "usage": usage,
        "response_sha256": evidence(result.evidence()) if result is not None else None,
    }
    if run.cache is not None:
        finish["cache"] = run.cache
    return {**run.base(), **finish}


def _attempt_metrics(run: _Run) -> None:
    m, capability = run.state.metrics, run.call.capability
    prev: Attempt | None = None
    for a in run.attempts:
        if a.outcome != "skipped":
            m.child(m.attempt_duration, a.adapter, capability, a.outcome).observe(a.latency_ms / 1000)
        if prev is not None and prev.outcome in ("failed", "skipped"):
            m.fallbacks.labels(prev.adapter, a.adapter, prev.outcome).inc()
        prev = a


async def refuse_arguments(state: AppState, tool: str, principal: str, fields: list[str]) -> None:
    """A call whose arguments did not validate: counted and audited (field names only, never values)."""
    m = state.metrics
    m.child(m.calls, tool, "rejected").inc()
    m.child(m.errors, tool, "invalid_arguments").inc()
    record: dict[str, Any] = {"call_id": new_call_id(), "principal": principal, "tool": tool, "decision": "deny"}
    record |= {"rule": "invalid_arguments", "outcome": "rejected", "fields": fields}
    await audit(state, "deny", record)
