from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mcp import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from adapters.errors import AdapterUnavailableError
from server.logs import JsonFormatter
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server

pytestmark = pytest.mark.anyio
ROUTES = {"routes": {"embed": ["a/m", "b/m"], "chat": ["b"], "rerank": ["b"]}}
POLICY = {"rules": [{"id": "no-long-chat", "effect": "deny", "match": {"tool": ["chat"], "max_tokens_over": 100}}]}


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_show_calls_attempts_fallbacks_denials_breakers_and_batches(tmp_path: Path) -> None:
    a, b = FakeAdapter("a"), FakeAdapter("b")
    a.fail_with = lambda: AdapterUnavailableError("refused")
    server, ref = fake_server(
        tmp_path,
        {"a": a, "b": b},
        routes=ROUTES,
        policy=POLICY,
        performance={"breaker": {"failure_threshold": 2, "cooldown_s": 60}},
    )
    async with Client(server) as c:
        for i in range(3):
            await c.call_tool("embed", {"input": [f"x{i}"]})  # distinct: each is served, none a cache hit
        await c.call_tool("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500})
        text = ref.get().metrics.render().decode()
    m = samples(text)
    assert m[("model_gateway_tool_calls_total", (("outcome", "ok"), ("tool", "embed")))] == 3
    assert (
        m[("model_gateway_tool_call_duration_seconds_count", (("adapter", "b"), ("outcome", "ok"), ("tool", "embed")))]
        == 3
    )
    assert m[("model_gateway_fallbacks_total", (("from_adapter", "a"), ("reason", "failed"), ("to_adapter", "b")))] == 2
    assert m[("model_gateway_policy_denials_total", (("rule", "rule:no-long-chat"),))] == 1
    assert m[("model_gateway_breaker_transitions_total", (("adapter", "a"), ("state", "open")))] == 1
    assert m[("model_gateway_breaker_state", (("adapter", "a"),))] == 2
    assert m[("model_gateway_adapter_up", (("adapter", "b"),))] == 1
    assert m[("model_gateway_coalesced_batch_texts_count", (("adapter", "b"),))] >= 1
    assert m[("model_gateway_audit_records_total", (("event", "deny"),))] == 1
    assert ("model_gateway_in_flight_calls", ()) in m
    assert "hi" not in text.replace("histogram", "")  # no prompt text in labels


async def test_spans_nest_attempts_under_the_tool_call_and_honour_incoming_trace_context(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    a, b = FakeAdapter("a"), FakeAdapter("b")
    a.fail_with = lambda: AdapterUnavailableError("refused")
    server, _ = fake_server(tmp_path, {"a": a, "b": b}, routes=ROUTES)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    spans.clear()
    async with Client(server) as c:
        await c.call_tool("embed", {"input": ["x", "y"]}, meta={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    finished = {s.name: s for s in spans.get_finished_spans()}
    call = finished["execute_tool embed"]
    assert format(call.context.trace_id, "032x") == trace_id
    assert call.attributes["gen_ai.tool.name"] == "embed"
    assert call.attributes["mcp.method.name"] == "tools/call"
    assert call.attributes["gen_ai.usage.input_tokens"] == 2
    attempts = [s for s in spans.get_finished_spans() if s.name == "embeddings m"]
    assert len(attempts) == 2 and all(s.parent.span_id == call.context.span_id for s in attempts)
    assert sorted(s.attributes["model_gateway.outcome"] for s in attempts) == ["failed", "ok"]
    assert {s.attributes["gen_ai.request.model"] for s in attempts} == {"m"}


def test_logs_are_json_lines_with_their_fields() -> None:
    record = logging.LogRecord("model_gateway.pipeline", logging.DEBUG, __file__, 1, "call", None, None)
    record.tool, record.latency_ms = "embed", 1.5
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "call" and line["tool"] == "embed" and line["latency_ms"] == 1.5
