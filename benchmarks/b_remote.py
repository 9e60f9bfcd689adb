"""Remote MCP: a gateway whose adapter is another gateway, vs that gateway directly (benchmark 13)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mcp import Client

from benchmarks.b_calls import check
from benchmarks.b_upstream import TEXT, embed_call
from benchmarks.core import Plan, Row, Target, compare, interleave, latency_sample
from benchmarks.procs import env_for, gateway_params, scratch_home
from benchmarks.upstream import OLLAMA_MODEL, fake_ollama, gateway_manifests
from tests.support.gateway import disabled_adapter
from tests.support.processes import ROOT


def two_hop_manifests(root: Path, downstream: Path, home: Path) -> Path:
    """The front gateway: one `mcp` adapter running `serve` over stdio with the downstream's manifests."""
    (root / "adapters").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in env_for(home).items() if k.startswith("MODEL_GATEWAY") or k in ("HOME", "PYTHONPATH")}
    remote = {
        "name": "remote",
        "kind": "mcp",
        "command": [sys.executable, "-m", "server", "serve", "--manifests", str(downstream)],
        "env": env,
        "cwd": str(ROOT),
        "models": [{"name": OLLAMA_MODEL, "capabilities": ["embed"]}],
    }
    (root / "adapters" / "remote.json").write_text(json.dumps(remote))
    for name in ("mlx", "ollama"):
        (root / "adapters" / f"{name}.json").write_text(json.dumps(disabled_adapter(name)))
    (root / "routes.json").write_text(json.dumps({"routes": {"embed": [f"remote/{OLLAMA_MODEL}"]}}))
    return root


async def bench_remote(plan: Plan) -> list[Row]:
    try:
        import adapters.mcp_remote  # noqa: F401
    except ImportError as exc:
        return [Row("13", "remote-MCP two-hop vs direct", skipped=f"MCP adapter not importable ({exc.name})")]
    with fake_ollama() as url, scratch_home() as home:
        downstream = gateway_manifests(home / "downstream", url)
        front = two_hop_manifests(home / "front", downstream, home)
        async with Client(gateway_params(home, front)) as two, Client(gateway_params(home, downstream)) as one:
            hop2, hop1 = embed_call(two, TEXT), embed_call(one, TEXT)
            await check(hop2, "two-hop gateway")
            await check(hop1, "direct gateway")
            n = plan.n(100, 10)
            rounds = await interleave(
                {"two-hop": latency_sample(hop2, n), "direct": latency_sample(hop1, n)}, plan.rounds
            )
    two_hop, direct = compare(rounds, "two-hop", "direct")
    return [
        Row(
            "13", "embed p50: gateway → remote-MCP gateway → Ollama vs direct", "ms", two_hop, direct, Target("<=", 2.2)
        )
    ]
