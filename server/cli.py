"""model-gateway: serve | discover | models pull/list | manifests schema | policy explain | audit verify.

Heavy imports stay inside the command that needs them, so `serve` reaches the
first `tools/list` without importing MLX or probing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import ConfigError, GatewayError

if TYPE_CHECKING:  # heavy modules: `serve` over stdio imports them in a worker thread
    from server.config import Settings
    from server.stdio.front import Serve
    from server.tracing import Tracing


def _out(text: str) -> None:
    """Command output for humans and scripts (never used by `serve`)."""
    sys.stdout.write(text + "\n")


def _configure_logging(level: str) -> None:
    from server.logs import configure

    configure(level)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="model-gateway", description="Local-first MCP model gateway.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server")
    serve.add_argument("--transport", choices=["stdio", "sse", "streamable-http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--manifests", type=Path, help="user manifests dir; overrides the shipped files")
    serve.add_argument("--stateless", action="store_true", help="Streamable HTTP without sessions (replicas)")
    serve.add_argument("--allowed-host", action="append", default=[], help="Host[:port] accepted beyond loopback")
    serve.add_argument("--privacy-mode", action="store_true", default=None, help="route to local adapters only")
    serve.add_argument("--metrics-port", type=int, help="stdio only: serve /metrics on 127.0.0.1:PORT")
    serve.add_argument(
        "--no-fast-start",
        action="store_true",
        help="stdio only: do not answer the handshake from the previous run's answers while starting",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="S",
        help="stdio only: on SIGTERM/SIGINT or end of input, how long calls in flight may run to finish (s)",
    )

    disc = sub.add_parser("discover", help="probe every adapter now and print what it serves")
    disc.add_argument("--json", action="store_true")
    disc.add_argument("--manifests", type=Path)

    models = sub.add_parser("models", help="model packs")
    msub = models.add_subparsers(dest="models_command", required=True)
    pull = msub.add_parser("pull", help="fetch, verify and install model packs")
    pull.add_argument("names", nargs="*", help="pack names (default: all in models.json)")
    pull.add_argument("--manifests", type=Path)
    lst = msub.add_parser("list", help="show packs and whether they are installed intact (checks every file's sha256)")
    lst.add_argument("--manifests", type=Path)
    lst.add_argument("--json", action="store_true")

    man = sub.add_parser("manifests", help="manifest tools")
    mansub = man.add_subparsers(dest="manifests_command", required=True)
    schema = mansub.add_parser("schema", help="print or write the manifests' JSON Schemas")
    schema.add_argument("--write", type=Path, help="directory to write *.schema.json into")

    _policy_parser(sub)

    audit = sub.add_parser("audit", help="audit trail tools")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    ver = asub.add_parser("verify", help="check every trail's chain and checkpoints; exit 1 on damage")
    ver.add_argument("path", type=Path, help="an audit log (audit.jsonl), its folder, or a folder of several trails")
    ver.add_argument("--repair", action="store_true", help="cut a torn last line (a crash mid-write), then verify")
    ver.add_argument("--key-file", type=Path, help="hex key file (default: MODEL_GATEWAY_AUDIT_KEY, then audit.key)")
    ver.add_argument("--json", action="store_true")
    return p


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 10**9:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1000000000")
    return value


def _policy_parser(sub: Any) -> None:
    pol = sub.add_parser("policy", help="policy tools")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    exp = psub.add_parser(
        "explain", help="the decision for a call and the rule that made it, with what each policy layer checked"
    )
    exp.add_argument("--tool", required=True, choices=["chat", "embed", "rerank", "privacy"])
    exp.add_argument("--model", help="as a call names it: adapter/model, a model name or alias (default: the route)")
    exp.add_argument("--principal", help="who calls (default: the local user, as on stdio)")
    exp.add_argument("--adapter", help="explain only this adapter's candidate")
    for size in ("texts", "chars", "documents", "max-tokens"):
        exp.add_argument(f"--{size}", type=_count, default=0, help=f"the call's {size.replace('-', '_')} (default 0)")
    exp.add_argument("--manifests", type=Path)
    exp.add_argument("--json", action="store_true")


def _serve(args: argparse.Namespace) -> int:
    tracing: list[Tracing] = []  # started with the server; flushed when it stops
    if _tracing_requested():
        import signal

        # uvicorn re-raises SIGTERM after its own shutdown and stdio has no handler: either way the process would
        # die before the `finally` below flushed the last spans, so SIGTERM becomes an ordinary exit
        signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        if args.transport == "stdio":
            from server.paths import default_cache_dir
            from server.stdio.front import enabled, run
            from server.stdio.handshake import options

            fingerprinted = options(args.manifests, args.privacy_mode, args.metrics_port)
            fast = enabled(args.no_fast_start, os.environ)
            prepare = partial(_prepare_stdio, args, tracing)
            return run(fingerprinted, os.environ, default_cache_dir(os.environ), prepare, fast=fast)
        settings = _settings(args)
        _configure_logging(settings.log_level)
        _start_tracing(tracing)
        import anyio

        from server.http_edge import serve_http
        from server.loopwatch import wanted

        anyio.run(serve_http, settings, wanted(os.environ))
        return 0
    finally:
        for t in tracing:
            t.shutdown()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _tracing_requested() -> bool:
    """Whether the OTEL_* variables ask for span export; with none set, nothing is imported."""
    if not any(name.startswith("OTEL_") for name in os.environ):
        return False
    from server.tracing import exporter_names

    return bool(exporter_names(os.environ))


def _start_tracing(into: list[Tracing]) -> None:
    """Span export as the OTEL_* variables ask."""
    if not _tracing_requested():
        return
    from server import __version__
    from server.tracing import start_tracing

    found = start_tracing(os.environ, __version__)
    if found is not None:
        into.append(found)


def _settings(args: argparse.Namespace) -> Settings:
    from server.config import ServeOptions, load_settings

    serve = ServeOptions(
        transport=args.transport,
        host=args.host,
        port=args.port,
        stateless=args.stateless,
        allowed_hosts=tuple(args.allowed_host),
        privacy_mode=args.privacy_mode,
        metrics_port=args.metrics_port,
    )
    return load_settings(manifests_dir=args.manifests, serve=serve)


def _prepare_stdio(args: argparse.Namespace, tracing: list[Tracing]) -> Serve:
    """Settings, logging, tracing, imports and the built server (the fast start runs this in a worker thread)."""
    settings = _settings(args)
    _configure_logging(settings.log_level)
    _start_tracing(tracing)
    from server.stdio.serve import prepare_stdio

    return prepare_stdio(settings, os.environ, max(0.0, args.shutdown_grace))


def _discover(args: argparse.Namespace) -> int:
    import anyio

    from server.config import load_settings
    from server.discovery import Discovery
    from server.state import build_adapters

    settings = load_settings(manifests_dir=args.manifests)
    _configure_logging("WARNING")

    async def run() -> Any:
        adapters = build_adapters(settings)
        try:
            return await Discovery(adapters, settings.manifests.performance.discovery, settings.snapshot_path).refresh()
        finally:
            for a in adapters.values():
                await a.aclose()

    snap = anyio.run(run)
    from server.discovery import snapshot_to_json

    data = snapshot_to_json(snap)
    if args.json:
        _out(json.dumps(data, indent=2))
        return 0
    for name, s in data["adapters"].items():
        latency = f"{s['latency_ms']:.1f} ms" if s["latency_ms"] is not None else "-"
        caps = sorted({c for m in s["models"] for c in m["capabilities"]})
        _out(f"{name:<16} {s['kind']:<7} {s['status']:<5} {latency:>10}  {','.join(caps) or '-'}")
        for m in s["models"]:
            _out(f"    {m['name']}  [{', '.join(m['capabilities'])}]")
        if s["error"]:
            _out(f"    error: {s['error']}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from server import packs
    from server.manifests import load_manifests
    from server.paths import default_models_dir

    user_dir = args.manifests
    manifests = load_manifests(user_dir)
    models_dir = default_models_dir(os.environ)
    if args.models_command == "pull":
        names = args.names or [p.name for p in manifests.models.packs]
        packs.pull(manifests.models, names, models_dir, progress=lambda msg: print(msg, file=sys.stderr))
        return 0
    rows = packs.list_packs(manifests.models, models_dir)
    damaged = any(r.state == "damaged" for r in rows)
    if getattr(args, "json", False):
        _out(json.dumps([{**r.__dict__, "state": r.state} for r in rows], indent=2, default=str))
        return 1 if damaged else 0
    for r in rows:
        _out(f"{r.name}: {r.state}  {r.package}=={r.version}  {r.path}")
        if r.state == "damaged":
            _out(f"    {r.detail}; run `model-gateway models pull {r.name}` to re-install it")
    return 1 if damaged else 0


def _manifests(args: argparse.Namespace) -> int:
    from server.manifests import manifest_schemas, write_schemas

    if args.write:
        for p in write_schemas(args.write):
            _out(str(p))
    else:
        _out(json.dumps(manifest_schemas(), indent=2, sort_keys=True))
    return 0


def _policy(args: argparse.Namespace) -> int:
    """Exit 0 when the call would be allowed, 1 when denied or when nothing serves it."""
    from server.config import load_settings
    from server.policy import PolicyEngine
    from server.policy_explain import CallQuery, explain_call, manifest_namer, to_json, to_text

    settings = load_settings(manifests_dir=args.manifests)
    engine = PolicyEngine(settings.manifests.policy, namer=manifest_namer(settings.manifests))
    query = CallQuery(
        tool=args.tool,
        model=args.model,
        principal=args.principal or settings.principal,
        adapter=args.adapter,
        texts=args.texts,
        chars=args.chars,
        documents=args.documents,
        max_tokens=args.max_tokens,
    )
    ex = explain_call(settings.manifests, engine, query)
    _out(json.dumps(to_json(ex, engine), indent=2) if args.json else to_text(ex, engine))
    return 0 if ex.decision is not None and ex.decision.allowed else 1


def _audit(args: argparse.Namespace) -> int:
    from server.audit_trails import verify_command, verify_text

    ok, result = verify_command(args.path, args.key_file, args.repair, os.environ)
    _out(json.dumps(result) if args.json else verify_text(result, args.path))
    return 0 if ok else 1


COMMANDS = {
    "serve": _serve,
    "discover": _discover,
    "models": _models,
    "manifests": _manifests,
    "policy": _policy,
    "audit": _audit,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, GatewayError) as exc:
        sys.stderr.write(f"model-gateway: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
