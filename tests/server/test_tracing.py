"""Tracing from the environment: a real `serve` exports its spans to an OTLP/HTTP collector on loopback."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from server.tracing import exporter_names, start_tracing
from tests.support.fake_ollama import spawn
from tests.support.proc import stop
from tests.support.processes import ROOT, gateway_argv, gateway_env, http_gateway, ollama_manifests, stdio_params

MAX_BODY = 16 << 20


@dataclass
class Received:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else None


@dataclass
class Collector:
    """What the loopback collector decoded, and an event set on the first export."""

    spans: list[Received] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    first: threading.Event = field(default_factory=threading.Event)

    def take(self, body: bytes) -> None:
        message = ExportTraceServiceRequest.FromString(body)
        for rs in message.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    ids = (s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex())
                    self.spans.append(Received(s.name, *ids, attributes, resource))
        self.first.set()


@contextmanager
def otlp_collector() -> Iterator[tuple[str, Collector]]:
    """An OTLP/HTTP trace receiver on 127.0.0.1: POST /v1/traces with a protobuf ExportTraceServiceRequest."""
    got = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != "/v1/traces" or not 0 < length <= MAX_BODY:
                self.send_error(400)
                return
            body = self.rfile.read(length)
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            got.requests.append(self.headers.get("Content-Type", ""))
            got.take(body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.anyio
@pytest.mark.e2e
@pytest.mark.parametrize("endpoint_var", ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"])
async def test_serve_exports_the_execute_tool_span_to_the_otlp_endpoint_named_in_the_environment(
    tmp_path: Path, endpoint_var: str
) -> None:
    with spawn() as ollama, otlp_collector() as (base, got):
        endpoint = base + "/v1/traces" if endpoint_var.endswith("TRACES_ENDPOINT") else base
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            endpoint_var: endpoint,
            "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing leaves before shutdown: only the final flush sends
        }
        params = stdio_params(tmp_path, ollama_manifests(tmp_path / "manifests", ollama), env=env)
        with anyio.fail_after(60):
            async with Client(params) as client:
                result = await client.call_tool("embed", {"input": ["the cat sat", "a dog ran"]})
                assert not result.is_error, result.content
                assert got.spans == []  # still queued in the server
            assert await anyio.to_thread.run_sync(got.first.wait, 20), "no spans arrived after the server stopped"
    assert got.requests[0] == "application/x-protobuf"
    by_name = {s.name: s for s in got.spans}
    call = by_name["execute_tool embed"]
    assert call.attributes["gen_ai.tool.name"] == "embed"
    assert call.attributes["gen_ai.operation.name"] == "execute_tool"
    assert call.attributes["model_gateway.adapter"] == "ollama"
    assert call.attributes["model_gateway.outcome"] == "ok"
    assert call.attributes["gen_ai.usage.input_tokens"] >= 2
    assert call.resource["service.name"] == "gateway-under-test"
    attempt = by_name["embeddings all-minilm:latest"]
    assert (attempt.trace_id, attempt.parent_id) == (call.trace_id, call.span_id)
    assert attempt.attributes["gen_ai.provider.name"] == "ollama"


@pytest.mark.anyio
@pytest.mark.e2e
async def test_an_http_serve_stopped_by_sigterm_flushes_its_spans(tmp_path: Path) -> None:
    with spawn() as ollama, otlp_collector() as (base, got):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_BSP_SCHEDULE_DELAY": "600000"}
        manifests = ollama_manifests(tmp_path / "manifests", ollama)
        with http_gateway(tmp_path, manifests, "streamable-http", env=env) as url:
            with anyio.fail_after(60):
                async with Client(url + "/mcp") as client:
                    result = await client.call_tool("embed", {"input": "x"})
            assert not result.is_error and got.spans == []
        assert await anyio.to_thread.run_sync(got.first.wait, 20), "no spans arrived after SIGTERM"
    call = next(s for s in got.spans if s.name == "execute_tool embed")
    assert call.resource["service.name"] == "model-gateway"  # the default when OTEL_SERVICE_NAME is unset
    assert call.attributes["model_gateway.outcome"] == "ok"


def _rpc(proc: subprocess.Popen[bytes], msg: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(msg) + "\n").encode())
    proc.stdin.flush()


@pytest.mark.e2e
def test_a_stdio_serve_stopped_by_sigterm_flushes_its_spans(tmp_path: Path) -> None:
    with spawn() as ollama, otlp_collector() as (base, got):
        env = gateway_env(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_BSP_SCHEDULE_DELAY": "600000"})
        argv = gateway_argv("--manifests", str(ollama_manifests(tmp_path / "manifests", ollama)))
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
            _rpc(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
            _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            call = {"name": "embed", "arguments": {"input": "x"}}
            _rpc(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
            assert proc.stdout is not None
            replies = [json.loads(proc.stdout.readline()) for _ in range(2)]
            assert replies[1]["result"]["structuredContent"]["count"] == 1
            assert got.spans == []
            proc.terminate()  # stdin stays open: only the signal stops it
            proc.wait(timeout=30)
        finally:
            stop(proc)
        assert got.first.wait(20), "no spans arrived after SIGTERM"
    assert any(s.name == "execute_tool embed" for s in got.spans)


def _modules_after_start(env: dict[str, str]) -> list[str]:
    code = (
        "import sys, server.cli as cli; found = []; cli._start_tracing(found); "
        "print(__import__('json').dumps(sorted(m for m in sys.modules if m.startswith(('opentelemetry', "
        "'server.tracing', 'google.protobuf')))))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_with_no_otel_variable_set_nothing_of_tracing_is_imported() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    assert _modules_after_start(env) == []
    asked = _modules_after_start({**env, "OTEL_TRACES_EXPORTER": "console"})
    assert "server.tracing" in asked and "opentelemetry.sdk.trace" in asked  # the same probe sees it when asked


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, Console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_the_standard_variables_decide_whether_tracing_starts(env: dict[str, str], names: list[str]) -> None:
    assert exporter_names(env) == names


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin is not supported here"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "'http/json' is not supported"),
    ],
)
def test_an_exporter_the_gateway_cannot_build_is_a_warning_not_a_crash(
    env: dict[str, str], needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="model_gateway.tracing"):
        assert start_tracing(env, "0") is None
    assert needle in caplog.text
