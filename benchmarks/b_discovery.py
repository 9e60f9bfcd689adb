"""Discovery: five adapters with known probe latency, one of them dead (benchmark 9)."""

from __future__ import annotations

import time

from adapters.base import Adapter, AdapterContext
from adapters.manifest import OllamaManifest
from adapters.ollama import OllamaAdapter
from benchmarks.core import Plan, Row, Sample, Target, compare, interleave
from server.discovery import Discovery
from server.manifests import load_manifests
from tests.support.fakes import FakeAdapter
from tests.support.processes import free_port

DELAYS_S = (0.04, 0.08, 0.12, 0.16)


def adapters() -> dict[str, Adapter]:
    """Four slow-but-up fakes and one real Ollama adapter aimed at a port nobody listens on."""
    out: dict[str, Adapter] = {f"up{i}": FakeAdapter(f"up{i}", probe_delay_s=d) for i, d in enumerate(DELAYS_S)}
    dead = OllamaManifest(kind="ollama", name="dead", endpoint=f"http://127.0.0.1:{free_port()}")
    out["dead"] = OllamaAdapter(dead, AdapterContext())
    return out


async def bench_discovery(plan: Plan) -> list[Row]:
    config = load_manifests(None).performance.discovery
    found = adapters()

    async def concurrent() -> float:
        started = time.perf_counter()
        snap = await Discovery(found, config).refresh()
        assert snap.adapters["dead"].status == "down" and snap.adapters["up0"].status == "up"
        return (time.perf_counter() - started) * 1000

    async def sequential() -> float:
        started = time.perf_counter()
        for name, adapter in found.items():
            await Discovery({name: adapter}, config).refresh()
        return (time.perf_counter() - started) * 1000

    variants: dict[str, Sample] = {"concurrent": concurrent, "sequential": sequential}
    try:
        rounds = await interleave(variants, plan.rounds)
    finally:
        for adapter in found.values():
            await adapter.aclose()
    conc, seq = compare(rounds, "concurrent", "sequential")
    slowest, total = max(DELAYS_S) * 1000, sum(DELAYS_S) * 1000
    return [
        Row(
            "9",
            "discovery, 5 adapters (one dead): concurrent wall vs slowest probe",
            "ms",
            conc,
            slowest,
            Target("<=", 1.2),
            note=f"probe sum {total:.0f} ms; sequential {seq:.0f} ms",
        ),
        Row("9-seq", "same: sequential probes vs concurrent", "ms", seq, conc, Target("report")),
    ]
