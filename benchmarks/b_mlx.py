"""MLX in-process (benchmarks 6 over MLX and 12); skipped when the encoder pack is not installed.

The pack comes from `model-gateway models pull all-minilm-l6-v2` (into the default
models dir) or from benchmarks/setup_peers.sh (into .bench/models).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.core import Plan, Row, Sample, Target, compare, interleave, latency_sample
from benchmarks.procs import gateway_params, scratch_home
from tests.support.processes import ROOT

PACK = "all-minilm-l6-v2"
MODEL = "all-minilm-l6-v2"


def models_dir() -> Path | None:
    """The first models dir whose pack was installed with content hashes (older records are refused at load)."""
    from adapters.mlx_pack import PackContentError, read_record
    from server.paths import default_models_dir

    for candidate in (default_models_dir(dict(__import__("os").environ)), ROOT / ".bench" / "models"):
        try:
            record = read_record(candidate / PACK)
        except PackContentError:
            continue
        if record is not None and record.digests is not None:
            return candidate
    return None


def unavailable() -> str | None:
    try:
        import mlx.core  # noqa: F401

        import adapters.mlx_local  # noqa: F401
    except ImportError as exc:
        return f"MLX adapter not importable ({exc.name})"
    if models_dir() is None:
        return f"model pack {PACK} not installed or outdated (run `model-gateway models pull {PACK}`)"
    return None


def encoder_manifest() -> dict[str, Any]:
    """The shipped MLX manifest with only the encoder (the chat pack is not needed here)."""
    raw = json.loads((ROOT / "manifests" / "adapters" / "mlx.json").read_text())
    raw["models"] = [m for m in raw["models"] if m.get("role") == "encoder"]
    return dict(raw)


def mlx_adapter(models: Path) -> Any:
    from adapters.base import AdapterContext
    from adapters.manifest import ADAPTER_MANIFEST
    from adapters.mlx_local import MLXAdapter

    manifest = ADAPTER_MANIFEST.validate_python(encoder_manifest())
    return MLXAdapter(manifest, AdapterContext(models_dir=models))  # type: ignore[arg-type]


def _fresh_process(models: Path) -> Sample:
    async def sample() -> float:
        started = time.perf_counter()
        argv = [sys.executable, "-m", "benchmarks.mlx_once", str(models)]
        with anyio.fail_after(120):
            done = await anyio.run_process(argv, cwd=ROOT, check=False, stderr=subprocess.PIPE)
        if done.returncode != 0:
            raise RuntimeError(f"fresh-process embed exited with {done.returncode}")
        return (time.perf_counter() - started) * 1000

    return sample


async def bench_mlx_warm(plan: Plan) -> list[Row]:
    """12: a warm in-process encoder vs a process started (and the model loaded) per request."""
    reason = unavailable()
    if reason:
        return [Row("12", "MLX embed warm in-process vs fresh process per request", skipped=reason)]
    from adapters.types import EmbedRequest

    models = models_dir()
    assert models is not None
    adapter = mlx_adapter(models)
    req = EmbedRequest(model=MODEL, texts=("the quick brown fox",))

    async def warm() -> Any:
        return await adapter.embed(req)

    try:
        with anyio.fail_after(120):
            await warm()
        rounds = await interleave(
            {"warm": latency_sample(warm, plan.n(50, 5)), "fresh": _fresh_process(models)},
            max(1, plan.n(plan.rounds, 1)),
        )
    finally:
        await adapter.aclose()
    w, f = compare(rounds, "warm", "fresh")
    return [
        Row(
            "12",
            "MLX embed (1 text) warm in-process vs fresh process per request",
            "ms",
            w,
            f,
            Target("report"),
            note=f"fresh process is {f / w:,.0f}× slower",
        )
    ]


def mlx_gateway_manifests(root: Path, coalesce: bool) -> Path:
    from benchmarks.upstream import gateway_manifests

    out = gateway_manifests(root, "http://127.0.0.1:9", {"batching": {"coalesce": coalesce}})
    (out / "adapters" / "mlx.json").write_text(json.dumps(encoder_manifest()))
    (out / "adapters" / "ollama.json").write_text(json.dumps({"name": "ollama", "kind": "ollama", "enabled": False}))
    (out / "routes.json").write_text(json.dumps({"routes": {"embed": [f"mlx/{MODEL}"], "rerank": [f"mlx/{MODEL}"]}}))
    return out


async def bench_coalescing_mlx(plan: Plan) -> list[Row]:
    """6 over MLX: two gateways (coalescing on/off) serving the in-process encoder."""
    reason = unavailable()
    if reason:
        return [Row("6-mlx", "16 concurrent 1-text embeds (MLX): coalesced vs pass-through", skipped=reason)]
    from benchmarks.b_upstream import coalescing_rows

    models = models_dir()
    env = {"MODEL_GATEWAY_MODELS_DIR": str(models)}
    with scratch_home() as home:
        on = gateway_params(home, mlx_gateway_manifests(home / "on", True), env)
        off = gateway_params(home, mlx_gateway_manifests(home / "off", False), env)
        return await coalescing_rows("6-mlx", "MLX in-process", on, off, plan, None)
