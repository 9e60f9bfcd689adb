"""Prometheus metrics (a private registry per server) and OpenTelemetry spans.

Labels are bounded: tool, capability, adapter (names from manifests), outcome
and error classes from fixed sets. Never prompts, ids or caller-supplied model
strings. OpenTelemetry goes through `opentelemetry-api` only: spans are no-ops
unless the user installs and configures an SDK.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}
CONTENT_TYPE = CONTENT_TYPE_LATEST
# GenAI semantic-convention operation names per capability.
OPERATION = {"chat": "chat", "embed": "embeddings", "rerank": "rerank"}
tracer = trace.get_tracer("model_gateway")


# Without OTEL_PYTHON_TRACER_PROVIDER in the environment (read once, as OpenTelemetry itself reads it on
# first use), the global provider is whatever `trace.set_tracer_provider()` installed, or nothing yet:
# its module slot says which without `get_tracer_provider()`'s os.environ lookup, a raised and caught
# KeyError, twice a call.
_PROVIDER_SLOT = not os.environ.get(OTEL_PYTHON_TRACER_PROVIDER) and hasattr(trace, "_TRACER_PROVIDER")


def tracing_configured() -> bool:
    """False until an OpenTelemetry SDK provider is installed: then spans are skipped, not just no-ops."""
    if _PROVIDER_SLOT:
        provider = trace._TRACER_PROVIDER
        return provider is not None and not isinstance(provider, trace.ProxyTracerProvider)
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


# With no tracer installed, a span is this shared no-op context: no generator frame per call.
_NO_SPAN: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)


def call_span(tool: str, capability: str, model: str | None) -> AbstractContextManager[Span]:
    """execute_tool span; a child of the SDK's `tools/call` server span (which honours `_meta` trace context)."""
    if not tracing_configured():
        return _NO_SPAN
    return _call_span(tool, capability, model)


@contextmanager
def _call_span(tool: str, capability: str, model: str | None) -> Iterator[Span]:
    with tracer.start_as_current_span(f"execute_tool {tool}", kind=SpanKind.INTERNAL) as span:
        span.set_attribute("mcp.method.name", "tools/call")
        span.set_attribute("gen_ai.operation.name", "execute_tool")
        span.set_attribute("gen_ai.tool.name", tool)
        span.set_attribute("model_gateway.capability", capability)
        if model:
            span.set_attribute("gen_ai.request.model", model)
        yield span


def attempt_span(adapter: str, kind: str, capability: str, model: str) -> AbstractContextManager[Span]:
    """One adapter attempt, named `{operation} {model}` as the GenAI conventions ask."""
    if not tracing_configured():
        return _NO_SPAN
    return _attempt_span(adapter, kind, capability, model)


@contextmanager
def _attempt_span(adapter: str, kind: str, capability: str, model: str) -> Iterator[Span]:
    operation = OPERATION.get(capability, capability)
    with tracer.start_as_current_span(f"{operation} {model}", kind=SpanKind.CLIENT) as span:
        span.set_attribute("gen_ai.operation.name", operation)
        span.set_attribute("gen_ai.request.model", model)
        span.set_attribute("gen_ai.provider.name", kind)
        span.set_attribute("model_gateway.adapter", adapter)
        yield span


def end_span_with(span: Span, outcome: str, error: str | None = None) -> None:
    span.set_attribute("model_gateway.outcome", outcome)
    if error:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "model_gateway_"
        self.tool_duration = Histogram(
            p + "tool_call_duration_seconds",
            "Tool call duration end to end inside the gateway.",
            ["tool", "adapter", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempt_duration = Histogram(
            p + "adapter_attempt_duration_seconds",
            "One adapter attempt.",
            ["adapter", "capability", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.probe_duration = Histogram(
            p + "discovery_probe_duration_seconds", "Adapter probe.", ["adapter"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.calls = Counter(p + "tool_calls_total", "Tool calls.", ["tool", "outcome"], registry=r)
        self.errors = Counter(p + "errors_total", "Errors by class.", ["tool", "error"], registry=r)
        self.fallbacks = Counter(
            p + "fallbacks_total", "Moves to the next candidate.", ["from_adapter", "to_adapter", "reason"], registry=r
        )
        self.policy_denials = Counter(p + "policy_denials_total", "Denied calls by rule.", ["rule"], registry=r)
        self.breaker_transitions = Counter(
            p + "breaker_transitions_total", "Breaker state changes.", ["adapter", "state"], registry=r
        )
        self.batch_size = Histogram(
            p + "coalesced_batch_texts",
            "Texts per coalesced embed batch.",
            ["adapter"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_calls = Histogram(
            p + "coalesced_batch_calls", "Calls merged per embed batch.", ["adapter"], buckets=BATCH_BUCKETS, registry=r
        )
        self.adapter_up = Gauge(p + "adapter_up", "1 when the last probe succeeded.", ["adapter"], registry=r)
        self.breaker_state = Gauge(p + "breaker_state", "0 closed, 1 half-open, 2 open.", ["adapter"], registry=r)
        self.snapshot_age = Gauge(p + "snapshot_age_seconds", "Age of the discovery snapshot.", registry=r)
        self.in_flight = Gauge(p + "in_flight_calls", "Tool calls executing now.", registry=r)
        self.audit_records = Counter(p + "audit_records_total", "Audit records written.", ["event"], registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: label sets are bounded, and the hot path asks for them per call."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_probe(self, adapter: str, seconds: float, ok: bool) -> None:
        self.probe_duration.labels(adapter).observe(seconds)
        self.adapter_up.labels(adapter).set(1 if ok else 0)

    def observe_batch(self, adapter: str, calls: int, texts: int) -> None:
        self.child(self.batch_calls, adapter).observe(calls)  # per embed call: memoised like the call metrics
        self.child(self.batch_size, adapter).observe(texts)

    def breaker_changed(self, adapter: str, state: str) -> None:
        self.breaker_transitions.labels(adapter, state).inc()
        self.breaker_state.labels(adapter).set(BREAKER_VALUE[state])

    def render(self) -> bytes:
        return generate_latest(self.registry)
