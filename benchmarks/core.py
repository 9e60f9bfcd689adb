"""What every benchmark shares: interleaved rounds, medians, result rows, the table and the JSON.

Compared variants run in the same process, one after the other within each
round (A B, then B A in the next round, so neither always runs first), after a
warm-up round that is thrown away. A benchmark reports the median over rounds
of each variant and the ratio of the medians; absolute numbers on a shared
machine are noisy, ratios measured side by side much less so.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Op = Literal["<=", ">=", "report"]


@dataclass(frozen=True)
class Target:
    """A bound on the ratio, or with `unit` set, on the measured value itself (e.g. ≤ 2 MiB)."""

    op: Op
    value: float = 0.0
    unit: str | None = None

    def met(self, ratio: float | None, measured: float | None = None) -> bool | None:
        x = measured if self.unit is not None else ratio
        if self.op == "report" or x is None or math.isnan(x):
            return None
        return x <= self.value if self.op == "<=" else x >= self.value

    def __str__(self) -> str:
        if self.op == "report":
            return "report"
        suffix = f" {self.unit}" if self.unit is not None else "×"
        return f"{'≤' if self.op == '<=' else '≥'} {self.value:g}{suffix}"


@dataclass
class Row:
    """One line of the results table: `measured` vs `baseline` in `unit`, ratio = measured / baseline."""

    bench: str  # "1", "6-mlx", ...
    what: str
    unit: str = ""
    measured: float | None = None
    baseline: float | None = None
    target: Target = field(default_factory=lambda: Target("report"))
    ratio: float | None = None
    note: str = ""
    skipped: str | None = None
    error: bool = False  # skipped because the benchmark itself failed
    extra: dict[str, float | int | str] = field(default_factory=dict)
    also_ok: bool = True  # a condition besides the ratio (e.g. no client built per request)

    def __post_init__(self) -> None:
        if self.ratio is None and self.measured is not None and self.baseline:
            self.ratio = self.measured / self.baseline

    @property
    def met(self) -> bool | None:
        if self.skipped:
            return None
        met = self.target.met(self.ratio, self.measured)
        return met if met is None else met and self.also_ok

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["target"] = str(self.target)
        data["met"] = self.met
        return data


@dataclass(frozen=True)
class Plan:
    """How hard to push: rounds of interleaved samples and a size knob per benchmark."""

    rounds: int = 5
    quick: bool = False

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


Sample = Callable[[], Awaitable[float]]


async def interleave(variants: dict[str, Sample], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant once per round, alternating which goes first; warm-up rounds are discarded."""
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            value = await variants[name]()
            if r >= warmup:
                out[name].append(value)
    return out


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def p50_ms(samples_s: list[float]) -> float:
    return statistics.median(samples_s) * 1000


async def timed_calls(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """Seconds taken by each of `n` sequential calls."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        out.append(time.perf_counter() - started)
    return out


def latency_sample(call: Callable[[], Awaitable[object]], n: int) -> Sample:
    """A round's sample: the p50 in ms of `n` sequential calls."""

    async def sample() -> float:
        return p50_ms(await timed_calls(call, n))

    return sample


def compare(rounds: dict[str, list[float]], measured: str, baseline: str) -> tuple[float, float]:
    return median(rounds[measured]), median(rounds[baseline])


# --- output ---------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _verdict(row: Row) -> str:
    if row.skipped:
        return "skipped"
    return {True: "yes", False: "NO", None: "-"}[row.met]


def table(rows: list[Row]) -> str:
    """A markdown table: benchmark, measured, baseline, ratio, target, met."""
    head = "| # | benchmark | measured | baseline | ratio | target | met? | notes |\n|---|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        unit = f" {r.unit}" if r.unit else ""
        if r.skipped:
            lines.append(f"| {r.bench} | {r.what} | - | - | - | {r.target} | skipped | {r.skipped} |")
            continue
        measured = _fmt(r.measured) + unit if r.measured is not None else "-"
        baseline = _fmt(r.baseline) + unit if r.baseline is not None else "-"
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "-"
        lines.append(
            f"| {r.bench} | {r.what} | {measured} | {baseline} | {ratio} | {r.target} | {_verdict(r)} | {r.note} |"
        )
    return "\n".join(lines)


def write_json(rows: list[Row], path: Path, meta: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": [r.to_json() for r in rows]}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
