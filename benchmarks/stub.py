"""A stub adapter with canned answers, and a gateway process that serves it.

The stub isolates what the gateway itself costs per call (validation, routing,
policy, audit, metrics, result shaping): its embed/chat/rerank return at once.

As a process: ``python -m benchmarks.stub [--transport stdio|streamable-http] [--port N]``
(HOME decides where the audit log and caches go, as for the real `serve`; BENCH_STUB_DELAY_MS
makes every embed take that long, as an upstream would).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import anyio

from adapters.base import AdapterInfo, ModelInfo, ProbeResult
from adapters.types import (
    ChatRequest,
    ChatResult,
    ChatTimings,
    EmbedRequest,
    EmbedResult,
    RerankRequest,
    RerankResult,
    Usage,
    rank,
)

MODEL = "m"
CANNED_VECTOR = (0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.5, -0.5)  # 8-d, unit length
ROUTES = {"routes": {"embed": [f"stub/{MODEL}"], "rerank": [f"stub/{MODEL}"], "chat": [f"stub/{MODEL}"]}}


class StubAdapter:
    """Answers every call with a canned result, at once or after `delay_s`; counts calls.

    An embed whose first text starts with "hold" waits until the call's deadline: it keeps one call in flight.
    """

    def __init__(self, name: str = "stub", delay_s: float = 0.0) -> None:
        model = ModelInfo(MODEL, frozenset({"embed", "rerank", "chat"}), dimensions=len(CANNED_VECTOR))
        self.info = AdapterInfo(name, "stub", "local", model.capabilities, (model,))
        self.calls = 0
        self.delay_s = delay_s

    async def probe(self) -> ProbeResult:
        return ProbeResult(ok=True, models=self.info.models)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        self.calls += 1
        if req.texts and req.texts[0].startswith("hold"):
            await anyio.sleep_forever()
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        return EmbedResult(req.model, [list(CANNED_VECTOR)] * len(req.texts), Usage(input_tokens=len(req.texts)))

    async def rerank(self, req: RerankRequest) -> RerankResult:
        self.calls += 1
        return RerankResult(req.model, rank([0.0] * len(req.documents), req.top_n), "upstream", Usage(1))

    async def chat(self, req: ChatRequest) -> ChatResult:
        self.calls += 1
        return ChatResult(req.model, "ok", "stop", Usage(1, 1), ChatTimings(0.0))

    async def aclose(self) -> None:
        return None


def stub_manifests(root: Path, audit_fsync: str | None = None) -> Path:
    """A user manifests dir: shipped MLX switched off, every capability routed to the stub."""
    from tests.support.gateway import write_manifests

    return write_manifests(root, routes=ROUTES, performance=performance(audit_fsync))


def performance(audit_fsync: str | None) -> dict[str, object]:
    """The shipped performance config without the response cache (every call measured here is served),
    with the audit fsync policy replaced when asked."""
    import json

    from tests.support.processes import ROOT

    shipped = json.loads((ROOT / "manifests" / "performance-config.json").read_text())
    shipped["response_cache"]["enabled"] = False
    if audit_fsync is not None:
        shipped["audit"]["fsync"] = audit_fsync
    return dict(shipped)


def _settings(transport: str, port: int, manifests: Path) -> object:
    from server.config import ServeOptions, load_settings

    return load_settings(manifests_dir=manifests, serve=ServeOptions(transport=transport, port=port))  # type: ignore[arg-type]


async def _serve(transport: str, port: int, manifests: Path, front_door: bool = True) -> None:
    from server.app import Gateway
    from server.config import Settings
    from server.http_edge import http_app, transport_security
    from server.http_server import uvicorn_config

    settings = _settings(transport, port, manifests)
    assert isinstance(settings, Settings)
    delay_s = float(os.environ.get("BENCH_STUB_DELAY_MS", "0")) / 1000
    gateway = Gateway(settings, {"stub": StubAdapter(delay_s=delay_s)})
    if transport == "stdio":
        # the same stdio path as `serve` (our wire, the handshake recorder), minus the fast start
        from server.stdio.fd import claim
        from server.stdio.front import Pipes, fresh_handover
        from server.stdio.handshake import HandshakeCache
        from server.stdio.serve import serve_stdio
        from server.stdio.session import Session, StdioOptions

        in_fd, out_fd = claim()
        cap = settings.manifests.performance.limits.max_line_bytes
        handover = fresh_handover(HandshakeCache(manifests / "stdio-handshake.json", "stub", None), cap)
        await serve_stdio(gateway, Session(handover, Pipes(in_fd, out_fd), StdioOptions(cap)))
        return
    import uvicorn

    if front_door:
        config = uvicorn_config(settings, http_app(gateway))
    else:  # the SDK's transport alone (its lifespan opens the state): what the front door is measured against
        app = gateway.server.streamable_http_app(json_response=True, transport_security=transport_security(settings))
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The gateway over a stub adapter with canned answers.")
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--manifests", type=Path, help="default: a fresh temp dir routing to the stub")
    parser.add_argument("--audit-fsync", choices=["always", "group", "never"], help="override the shipped policy")
    parser.add_argument(
        "--no-front-door", action="store_true", help="HTTP: serve the SDK's app without the gateway's HTTP layers"
    )
    args = parser.parse_args(argv)
    import anyio

    os.environ.setdefault("MODEL_GATEWAY_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="stub-manifests-") as tmp:
        manifests = args.manifests or stub_manifests(Path(tmp), args.audit_fsync)
        try:
            anyio.run(_serve, args.transport, args.port, manifests, not args.no_front_door)
        except KeyboardInterrupt:
            sys.exit(130)


if __name__ == "__main__":
    main()
