"""Hostile HTTP traffic against the real `model-gateway serve` process, with the tally of what went wrong.

    python -m benchmarks.hostile --part http [--seed 1] [--scale 1.0]   (with the other parts' figures)
    python -m benchmarks.hostile.http [--requests 2400] [--seed 7] [--server-root DIR] [--json PATH]
    python -m benchmarks.hostile.http --flood 10000 [--server-root DIR]    (benchmarks/hostile/http_flood.py)

Two principals (bearer tokens from MODEL_GATEWAY_AUTH_TOKENS_FILE) and a third that only
pings. A seeded mix of tries runs eight at a time: bad Host and Origin values, missing or wrong
tokens, one principal using the other's session on every verb (Streamable HTTP and legacy SSE),
session floods, oversized, streamed and trickling bodies, headers sent a byte at a time,
malformed JSON-RPC, and clients that hang up while their call is upstream. Meanwhile a prober
asks GET /health and an MCP ping every quarter second.

Printed: tries, crashes (the process died), hangs (a probe unanswered within 2 s),
cross-principal accesses, connections held past their deadline, lockouts (a new session
refused), dropped calls whose upstream was released at once, calls audited `cancelled`, idle and
peak RSS. The goal: 0 crashes, 0 hangs, 0 cross-principal accesses, 0 held, peak RSS under
2x idle + 64 MiB. The server measures its own event loop (MODEL_GATEWAY_LOOP_WATCH=1) and
reports the longest block on stderr when it stops; anything it writes to stdout is counted
(nothing should be). `--server-root` runs the server from another checkout (an older commit,
to compare); settings that checkout does not know are left out. As a part of
`python -m benchmarks.hostile` (`PART`), both phases are summed into one `Result`.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
import httpx2

from benchmarks.hostile import http_attacks as attack
from benchmarks.hostile.harness import ServerFigures
from benchmarks.hostile.record import Part, Plan, Result
from tests.support.hanging_upstream import HangingOllama
from tests.support.mcp_http import headers, initialize_message, tokens_file, tool_call
from tests.support.proc import stop
from tests.support.processes import ROOT, free_port, gateway_env, ollama_manifests, wait_http

TOKENS = {"alice": "tok-alice-1234", "bob": "tok-bob-56789", "carol": "tok-carol-0000"}
FRONT_DOOR = {
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "max_body_bytes": 1024 * 1024,
    "max_sessions_per_principal": 16,
    "session_idle_timeout_s": 60.0,
}
TRIES = 2400  # one full run
CLEAN_EXITS = (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it drained for, once it is done
Attack = Callable[[attack.Target], Awaitable[None]]
STREAMABLE_MIX: list[tuple[Attack, int]] = [
    (attack.bad_host, 12),
    (attack.bad_origin, 10),
    (attack.no_token, 8),
    (attack.cross_principal, 25),
    (attack.own_call, 15),
    (attack.session_flood, 12),
    (attack.oversized, 3),
    (attack.garbage, 10),
    (attack.slow_body, 1),
    (attack.slowloris, 1),
    (attack.dropped_call, 1),
]


@dataclass
class PhaseResult:
    transport: str
    tries: int
    crashed: bool
    hangs: int
    probes: int
    cross_principal: int
    held_open: int
    lockouts: int
    dropped: int
    released: int
    audited_cancelled: int
    idle_rss_mib: float
    peak_rss_mib: float
    unexpected: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    largest_error_reply: int = 0
    server: ServerFigures = field(default_factory=ServerFigures)

    @property
    def rss_ok(self) -> bool:
        return self.peak_rss_mib < 2 * self.idle_rss_mib + 64

    @property
    def ok(self) -> bool:
        return not (self.crashed or self.hangs or self.cross_principal or self.held_open) and self.rss_ok


def rss_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def gateway(
    tmp: Path, upstream_url: str, transport: str, server_root: Path, front_door: dict[str, float] | None = FRONT_DOOR
) -> Iterator[subprocess.Popen[bytes]]:
    """The server from `server_root` with `front_door` settings (None: as shipped) and the three tokens."""
    manifests = ollama_manifests(tmp / f"manifests-{transport}", upstream_url)
    shipped = json.loads((server_root / "manifests" / "performance-config.json").read_text())
    if front_door and "http_server" in shipped:  # an older checkout has no such settings
        shipped["http_server"].update(front_door)
        (manifests / "performance-config.json").write_text(json.dumps(shipped))
    env = gateway_env(
        tmp / "home",
        {
            "MODEL_GATEWAY_AUTH_TOKENS_FILE": str(tokens_file(tmp / "tokens.json", {t: p for p, t in TOKENS.items()})),
            "MODEL_GATEWAY_LOG_LEVEL": "WARNING",
            "MODEL_GATEWAY_LOOP_WATCH": "1",
            "PYTHONPATH": str(server_root),
        },
    )
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "server",
        "serve",
        "--transport",
        transport,
        "--port",
        str(port),
        "--manifests",
        str(manifests),
    ]
    with open(tmp / f"stdout-{transport}.log", "wb") as out, open(tmp / f"stderr-{transport}.log", "wb") as err:
        proc = subprocess.Popen(argv, env=env, cwd=server_root, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    proc.port = port  # type: ignore[attr-defined]
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        yield proc
    finally:
        stop(proc, 15)


async def probe(t: attack.Target, done: anyio.Event, counts: dict[str, int]) -> None:
    """/health and an MCP ping every quarter second; an answer later than 2 s (or none) is a hang."""
    async with httpx2.AsyncClient(timeout=2, headers={"authorization": f"Bearer {TOKENS['carol']}"}) as http:
        sid = None
        if t.transport == "streamable-http":
            first = await http.post(t.url, json=initialize_message(), headers=headers(TOKENS["carol"]))
            sid = first.headers.get("mcp-session-id")
        while not done.is_set():
            counts["probes"] += 1
            try:
                with anyio.fail_after(2):
                    await http.get(t.base + "/health")
                    if sid is not None:
                        await http.post(
                            t.url,
                            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                            headers=headers(TOKENS["carol"], sid),
                        )
            except (TimeoutError, *attack.NETWORK_ERRORS):
                counts["hangs"] += 1
            with anyio.move_on_after(0.25):
                await done.wait()


async def run_mix(t: attack.Target, mix: list[tuple[Attack, int]], tries: int, workers: int = 8) -> None:
    attacks = [a for a, _ in mix]
    weights = [w for _, w in mix]
    # the slow tries are few but each is guaranteed a turn, so every kind is in every run
    plan = [*attacks, *t.rng.choices(attacks, weights, k=10 * tries)]
    queue = iter(plan)

    async def worker() -> None:
        for one in queue:
            if t.tally.tries >= tries:
                return
            try:
                await one(t)
            except attack.NETWORK_ERRORS as exc:
                t.tally.answer(one.__name__, type(exc).__name__, set())

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)


async def sse_mix(t: attack.Target, tries: int) -> None:
    async with attack.sse_client(t) as alice:
        mix: list[tuple[Attack, int]] = [
            (attack.bad_host, 20),
            (attack.bad_origin, 15),
            (attack.no_token, 10),
            (lambda target: attack.sse_cross(target, alice.session_id), 40),
            (attack.sse_flood, 10),
        ]
        await run_mix(t, mix, tries)
        own = await t.http.post(
            alice.endpoint, json=tool_call("embed", {"input": ["a"]}, 99), headers=headers(TOKENS["alice"])
        )
        t.tally.answer("sse_own", own.status_code, {202})
        answer = await alice.wait_for(99)
        t.tally.answer("sse_own", 200 if "result" in answer else 500, {200})
        t.tally.cross_principal += len([m for m in alice.messages if m.get("id") == 77])


async def phase(tmp: Path, upstream: HangingOllama, transport: str, tries: int, seed: int, root: Path) -> PhaseResult:
    cancelled_before = audited_cancelled(tmp / "home")
    with gateway(tmp, upstream.url, transport, root) as proc:
        port: int = proc.port  # type: ignore[attr-defined]
        limits = httpx2.Limits(max_connections=32, max_keepalive_connections=16)
        async with httpx2.AsyncClient(timeout=10, limits=limits) as http:
            t = attack.Target(
                f"http://127.0.0.1:{port}",
                port,
                transport,
                TOKENS,
                upstream,
                FRONT_DOOR["header_timeout_s"],
                FRONT_DOOR["body_timeout_s"],
                int(FRONT_DOOR["max_body_bytes"]),
                http,
                attack.Tally(),
                random.Random(seed),
            )
            await warm_up(t)
            idle = rss_mib(proc.pid, "VmRSS")
            counts = {"probes": 0, "hangs": 0}
            done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe, t, done, counts)
                if transport == "sse":
                    await sse_mix(t, tries)
                else:
                    await run_mix(t, STREAMABLE_MIX, tries)
                done.set()
        peak = rss_mib(proc.pid, "VmHWM") if proc.poll() is None else 0.0
        crashed = proc.poll() is not None
    server = ServerFigures.read(proc.returncode, tmp / f"stdout-{transport}.log", tmp / f"stderr-{transport}.log")
    tally = t.tally
    return PhaseResult(
        transport,
        tally.tries,
        crashed,
        counts["hangs"],
        counts["probes"],
        tally.cross_principal,
        tally.held_open,
        tally.lockouts,
        tally.dropped,
        tally.released,
        audited_cancelled(tmp / "home") - cancelled_before,
        round(idle, 1),
        round(peak, 1),
        dict(tally.unexpected),
        dict(tally.samples),
        dict(tally.by_kind),
        tally.largest_error_reply,
        server,
    )


async def warm_up(t: attack.Target) -> None:
    sid = await attack.open_session(t, "alice") if t.transport != "sse" else None
    if sid is not None:
        for _ in range(3):
            await t.http.post(
                t.url, json=tool_call("embed", {"input": ["warm"]}), headers=headers(TOKENS["alice"], sid)
            )
        t.alice_sessions.append(sid)
    t.tally = attack.Tally()


def audited_cancelled(home: Path) -> int:
    path = home / ".local" / "state" / "model-gateway" / "audit" / "audit.jsonl"
    if not path.exists():
        return 0
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return sum(1 for r in records if r.get("event") == "finish" and r.get("outcome") == "cancelled")


async def campaign(
    tries: int = TRIES, seed: int = 7, server_root: Path = ROOT, keep: Path | None = None
) -> list[PhaseResult]:
    """The streamable-HTTP phase gets four fifths of the tries, legacy SSE the rest."""
    results = []
    with tempfile.TemporaryDirectory(prefix="hostile-http-") as scratch, HangingOllama(60, "HANG-HERE") as up:
        tmp = keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        sse_tries = tries // 5
        results.append(await phase(tmp, up, "streamable-http", tries - sse_tries, seed, server_root))
        results.append(await phase(tmp, up, "sse", sse_tries, seed + 1, server_root))
    return results


def report(results: list[PhaseResult]) -> str:
    lines = []
    for r in results:
        lines.append(
            f"{r.transport:<16} tries {r.tries:>5}  crashes {int(r.crashed)}  hangs {r.hangs}/{r.probes} probes  "
            f"cross-principal {r.cross_principal}  held-open {r.held_open}  lockouts {r.lockouts}  "
            f"dropped {r.dropped} (released {r.released}, audited cancelled {r.audited_cancelled})  "
            f"RSS idle {r.idle_rss_mib} MiB peak {r.peak_rss_mib} MiB ({'ok' if r.rss_ok else 'OVER'} 2x+64)  "
            f"largest error reply {r.largest_error_reply} B"
        )
        if r.unexpected:
            lines.append(f"{'':<16} unexpected answers: {r.unexpected}  e.g. {r.samples}")
    total = sum(r.tries for r in results)
    lines.append(f"total tries {total}; goal met: {all(r.ok for r in results)}")
    return "\n".join(lines)


def run(plan: Plan, root: Path = ROOT) -> Result:
    """Both phases with `plan.n(2400)` tries, as one part of `python -m benchmarks.hostile`."""
    started = time.perf_counter()
    results = anyio.run(campaign, plan.n(TRIES), plan.seed, root)
    result = as_result(results)
    result.seconds = time.perf_counter() - started
    return result


def as_result(results: list[PhaseResult]) -> Result:
    """The phases summed into the campaign's shared figures; what only HTTP has goes into the examples."""
    r = Result("http")
    for phase in results:
        s = phase.server
        r.tries += phase.tries
        r.crashes += int(phase.crashed)
        r.hangs += phase.hangs
        r.cross_principal += phase.cross_principal
        r.non_json_bytes += s.stdout_bytes  # over HTTP stdout carries nothing at all
        r.unclean_exits += int(not phase.crashed and s.exit_code not in CLEAN_EXITS)
        r.idle_rss_mib = max(r.idle_rss_mib, phase.idle_rss_mib)
        r.peak_rss_mib = max(r.peak_rss_mib, phase.peak_rss_mib)
        r.largest_error_bytes = max(r.largest_error_bytes, phase.largest_error_reply)
        r.stderr_bytes += s.stderr_bytes
        r.longest_log_line = max(r.longest_log_line, s.longest_log_line)
        if s.loop_block_ms is not None:
            r.loop_block_ms = max(r.loop_block_ms or 0.0, s.loop_block_ms)
        if s.loop_busy_ms is not None:
            r.loop_busy_ms = max(r.loop_busy_ms or 0.0, s.loop_busy_ms)
        r.example(
            f"{phase.transport}: held-open {phase.held_open}, lockouts {phase.lockouts}, dropped {phase.dropped} "
            f"(released {phase.released}, audited cancelled {phase.audited_cancelled}), "
            f"unexpected answers {sum(phase.unexpected.values())} {phase.samples or ''}"
        )
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=TRIES)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--server-root", type=Path, default=ROOT)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the servers' logs, manifests and audit here")
    parser.add_argument("--flood", type=int, metavar="N", help="instead: N abandoned sessions, shipped limits")
    args = parser.parse_args(argv)
    if args.flood:
        from benchmarks.hostile.http_flood import flood

        figures = anyio.run(flood, args.flood, args.server_root.resolve())
        print("  ".join(f"{k} {v}" for k, v in figures.items()))
        return 0 if figures["refused"] == 0 and figures["newcomer_status"] == 200 else 1
    results = anyio.run(campaign, args.requests, args.seed, args.server_root.resolve(), args.keep)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.ok for r in results) else 1


PART = Part("http", run, min_tries=TRIES)

if __name__ == "__main__":
    sys.exit(main())
