"""The result every part of the campaign reports, the goals it is held to, and the printed table."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HANG_S = 2.0  # a ping unanswered this long is a hang
MAX_LOOP_BLOCK_MS = 100.0
RSS_SLACK_MIB = 64.0
MAX_EXAMPLES = 12  # failures kept as examples, each cut to EXCERPT characters
EXCERPT = 400


@dataclass(frozen=True)
class Plan:
    """How hard one run pushes: `scale` multiplies every count; `seed` fixes every random choice."""

    seed: int = 1
    scale: float = 1.0
    line_cap: int | None = None  # the server's line cap for this run (None: its default)

    def n(self, count: int) -> int:
        return max(1, int(count * self.scale))


@dataclass
class Result:
    part: str
    tries: int = 0  # messages (or requests) sent
    crashes: int = 0  # the server process ended without being asked to
    hangs: int = 0  # pings unanswered for longer than HANG_S
    non_json_bytes: int = 0  # stdout bytes that were not a JSON-RPC message
    loop_block_ms: float | None = None  # the longest event-loop block the server measured (None: not reported)
    loop_busy_ms: float | None = None  # the longest block counting only time the server process was running
    longest_ping_ms: float = 0.0  # the longest ping round trip seen from outside
    idle_rss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    cross_principal: int = 0  # another principal's session or stream reached
    unanswered: int = 0  # requests with a valid id that got no answer at all
    unclean_exits: int = 0  # asked to stop (SIGTERM), ended with a code other than 0
    largest_reply_bytes: int = 0
    largest_error_bytes: int = 0  # the longest JSON-RPC error answer (an echo of the input shows here)
    stderr_bytes: int = 0
    longest_log_line: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    def example(self, what: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(what[:EXCERPT])

    def goals(self, min_tries: int) -> dict[str, bool]:
        rss_bound = 2 * self.idle_rss_mib + RSS_SLACK_MIB
        return {
            f"tries >= {min_tries}": self.tries >= min_tries,
            "0 crashes": self.crashes == 0,
            "0 hangs": self.hangs == 0,
            "0 non-JSON bytes": self.non_json_bytes == 0,
            f"loop block <= {MAX_LOOP_BLOCK_MS:g} ms (wall clock)": self.loop_block_ms is not None
            and self.loop_block_ms <= MAX_LOOP_BLOCK_MS,
            f"loop block <= {MAX_LOOP_BLOCK_MS:g} ms (while the server ran)": self.loop_busy_ms is not None
            and self.loop_busy_ms <= MAX_LOOP_BLOCK_MS,
            f"peak RSS <= 2x idle + {RSS_SLACK_MIB:g} MiB": self.peak_rss_mib <= rss_bound,
            "0 cross-principal": self.cross_principal == 0,
        }


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[Plan, Path], Result]  # (plan, the checkout whose server is run)
    min_tries: int  # the goal for one full run (scale 1)


def table(results: Iterable[tuple[Part, Result]], plan: Plan) -> str:
    rows = ["| part | figure | value | goal met? |", "|---|---|---|---|"]
    for part, r in results:
        loop = "not reported" if r.loop_block_ms is None else f"{r.loop_block_ms:.1f} ms"
        busy = "not reported" if r.loop_busy_ms is None else f"{r.loop_busy_ms:.1f} ms"
        figures = [
            ("tries", f"{r.tries:,}"),
            ("crashes", str(r.crashes)),
            ("hangs (ping > 2 s)", str(r.hangs)),
            ("non-JSON stdout bytes", f"{r.non_json_bytes:,}"),
            ("longest event-loop block (inside, wall clock)", loop),
            ("longest event-loop block while the server ran (inside, CPU)", busy),
            ("longest ping round trip (outside)", f"{r.longest_ping_ms:.1f} ms"),
            ("RSS idle / peak", f"{r.idle_rss_mib:.0f} / {r.peak_rss_mib:.0f} MiB"),
            ("cross-principal accesses", str(r.cross_principal)),
            ("requests never answered", f"{r.unanswered:,}"),
            ("unclean exits after SIGTERM", str(r.unclean_exits)),
            ("largest reply", f"{r.largest_reply_bytes:,} bytes"),
            ("longest error answer", f"{r.largest_error_bytes:,} bytes"),
            ("stderr written / longest line", f"{r.stderr_bytes:,} / {r.longest_log_line:,} bytes"),
            ("wall time", f"{r.seconds:.1f} s"),
        ]
        rows += [f"| {part.name} | {name} | {value} | |" for name, value in figures]
        min_tries = int(part.min_tries * plan.scale)
        rows += [
            f"| {part.name} | goal: {goal} | | {'yes' if ok else 'NO'} |" for goal, ok in r.goals(min_tries).items()
        ]
    return "\n".join(rows)


def write_json(path: Path, results: Iterable[tuple[Part, Result]], plan: Plan) -> None:
    data = {
        "plan": asdict(plan),
        "parts": [{**asdict(r), "goals": r.goals(int(p.min_tries * plan.scale))} for p, r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
