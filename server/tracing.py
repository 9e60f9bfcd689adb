"""OpenTelemetry export switched on by the standard OTEL_* variables, with no code.

Tracing starts when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`,
`console`) or an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), unless `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none`. The SDK and exporter come from the `otel` extra
and are imported only then; with no OTEL_* variable set the CLI does not even
import this module. The SDK reads the rest of the standard variables itself:
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the service is called
`model-gateway` when neither names it), `OTEL_TRACES_SAMPLER[_ARG]`,
`OTEL_BSP_*` (batching), `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`, `_TIMEOUT`,
`_COMPRESSION`, `_CERTIFICATE`.

Spans leave in batches from the SDK's own thread; `Tracing.shutdown()` flushes
what is left when the server stops, waiting a bounded time.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("model_gateway.tracing")

EXTRA_HINT = "pip install 'brainwav-model-gateway[otel]'"
SHUTDOWN_WAIT_S = 5.0
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for; empty when tracing stays off."""
    if _flag(env, "OTEL_SDK_DISABLED"):
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and any(env.get(e, "").strip() for e in _ENDPOINTS):
        names = ["otlp"]  # an endpoint alone is a request to export there
    return [n for n in names if n != "none"]


@dataclass
class Tracing:
    """The installed tracer provider; `shutdown()` exports what is still queued."""

    provider: Any
    exporters: tuple[str, ...]

    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Flush and stop the exporters; gives up after `wait_s` (an unreachable collector must not hold exit)."""
        done = threading.Thread(target=self.provider.shutdown, name="model-gateway-otel-shutdown", daemon=True)
        done.start()
        done.join(wait_s)
        if done.is_alive():
            log.warning("tracing: spans not flushed within %.0f s; the rest are dropped", wait_s)
            return False
        return True


def start_tracing(env: Mapping[str, str], version: str) -> Tracing | None:
    """Install an SDK tracer provider with the exporters the environment names; None when tracing stays off."""
    names = exporter_names(env)
    if not names:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing: OTEL_* asks for %s but the SDK is not installed (%s)", ",".join(names), EXTRA_HINT)
        return None
    exporters = [(n, e) for n in names if (e := _exporter(n, env)) is not None]
    if not exporters:
        return None
    resource = Resource.create({"service.version": version})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "model-gateway"}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for _, exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    used = tuple(n for n, _ in exporters)
    log.info("tracing: exporting spans (%s) as service %s", ",".join(used), resource.attributes.get("service.name"))
    return Tracing(provider, used)


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)  # stdout carries JSON-RPC in stdio mode
    if name != "otlp":
        log.warning("tracing: OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none)", name)
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    protocol = protocol.strip().lower() or "http/protobuf"
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            return GrpcExporter()
    except ImportError:
        extra = "opentelemetry-exporter-otlp-proto-grpc" if protocol == "grpc" else EXTRA_HINT
        log.warning("tracing: the OTLP %s exporter is not installed (%s)", protocol, extra)
        return None
    log.warning("tracing: OTLP protocol %r is not supported here (http/protobuf, grpc)", protocol)
    return None
