"""Hostile upstream campaign: a real `serve` process over stdio, its Ollama upstream misbehaving on purpose.

    python -m benchmarks.hostile --part upstream [--scale 1.0]   (3 rounds at scale 1, with the other parts)
    python -m benchmarks.hostile.upstream [--rounds N] [--quick] [--gateway-root DIR] [--json PATH]

The upstream is the loopback fake Ollama in its own process; before each try one
fault is injected (oversized bodies, vectors millions of dimensions wide, slow
drips and stalls, wrong shapes, deep nesting, dropped connections), one tool call
goes through the gateway, and a healthy call right afterwards checks that it
recovered at once (each try first waits, up to 40 s, for the gateway to serve).
All along, a ping is kept in flight (the next one as soon as the last is answered):
the longest ping round trip is the longest time the server's event loop could
not answer. Prints, per scenario and in total: tries, crashes, hangs (a ping
unanswered for 2 s, or a call unanswered past its deadline plus 10 s), the
longest ping round trip, the peak RSS, and what the client got; the server also measures its
own event loop (MODEL_GATEWAY_LOOP_WATCH=1) and reports the longest block on stderr at exit.

`--gateway-root` runs the server from another checkout (e.g. an older commit
exported with `git archive`), driven by this checkout's fakes, for before/after
figures.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import Process

from benchmarks.hostile.harness import ServerFigures
from benchmarks.hostile.record import Part, Plan, Result
from benchmarks.upstream import gateway_manifests
from server.loopwatch import ENV as LOOP_WATCH
from tests.support.fake_ollama import Fault, remote_inject, remote_reset, spawn
from tests.support.processes import ROOT, gateway_env

ROUNDS = 3  # tries per scenario in one full run
DEADLINE_S = 5.0  # the gateway's per-call deadlines in this campaign (shipped: 30-120 s)
PING_HANG_S = 2.0
CALL_GRACE_S = 10.0
HEAL_S = 40.0  # longer than discovery's recheck of a down adapter (15 s)
MAX_LINE = 16 << 20  # longer answer lines are measured, not kept
EMBED = {"input": ["hostile upstream"]}
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
RERANK = {"query": "q", "documents": ["a", "b"]}


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Mapping[str, Any]
    tool: str = "embed"
    arguments: Mapping[str, Any] = field(default_factory=lambda: EMBED)


def scenarios() -> list[Scenario]:
    embed, chat = "/api/embed", "/api/chat"
    return [
        Scenario("200 MB body, chunked", {"kind": "oversized", "path": embed, "size_bytes": 200 << 20}),
        Scenario("200 MB body, Content-Length", {"kind": "oversized", "path": embed, "declare_length": True}),
        Scenario("6,000,000-dimension vector", {"kind": "wide", "path": embed, "dimensions": 6_000_000}),
        Scenario("70,000-dimension vector", {"kind": "wide", "path": embed, "dimensions": 70_000}),
        Scenario("rerank over 6,000,000-dim vectors", {"kind": "wide", "path": embed}, "rerank", RERANK),
        Scenario("chat answer of 200 MB", {"kind": "oversized", "path": chat}, "chat", CHAT),
        Scenario("slow drip (a byte per 0.2 s)", {"kind": "drip", "path": embed, "drip_interval_s": 0.2}),
        Scenario("stalled headers (30 s)", {"kind": "slow", "path": embed, "delay_s": 30.0}),
        Scenario("malformed JSON", {"kind": "malformed", "path": embed}),
        Scenario("wrong vector count", {"kind": "wrong_count", "path": embed}),
        Scenario("ragged vectors", {"kind": "ragged", "path": embed}),
        Scenario("JSON nested 100,000 deep", {"kind": "body", "path": embed, "body": "[" * 100_000 + "]" * 100_000}),
        Scenario("NaN in a vector", {"kind": "body", "path": embed, "body": '{"embeddings": [[NaN, 0.5]]}'}),
        Scenario("strings for numbers", {"kind": "body", "path": embed, "body": '{"embeddings": [["0.5"]]}'}),
        Scenario("connection dropped", {"kind": "disconnect", "path": embed}),
        Scenario("500 with 1 MB of error text", {"kind": "status", "path": embed, "message": "x " * 500_000}),
    ]


@dataclass
class Outcome:
    scenario: str
    tries: int = 0
    crashes: int = 0
    hangs: int = 0
    unrecovered: int = 0
    loop_block_ms: float = 0.0
    peak_rss_mib: float = 0.0
    client_got: str = ""


class Peer:
    """Raw JSON-RPC over the server's stdio: every response routed to its request by id.

    A line longer than MAX_LINE is not kept: its size is delivered to its request instead
    (an answer that large is itself a finding).
    """

    def __init__(self, proc: Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._next = 0
        self._waiting: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self.non_json_lines = 0
        self.non_json_bytes = 0

    async def read_forever(self) -> None:
        line, size = bytearray(), 0
        while True:
            try:
                chunk = await self._stdout.receive(1 << 16)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            *ends, rest = chunk.split(b"\n")
            for end in ends:
                self._deliver(bytes(line + end) if size + len(end) <= MAX_LINE else bytes(line), size + len(end))
                line, size = bytearray(), 0
            size += len(rest)
            if len(line) < MAX_LINE:
                line += rest[: MAX_LINE - len(line)]

    def _deliver(self, data: bytes, size: int) -> None:
        if size > MAX_LINE:
            found = re.search(rb'"id"\s*:\s*(\d+)', data[:512])
            message: Any = {"id": int(found.group(1)), "oversized": size} if found else None
        else:
            try:
                message = json.loads(data)
            except ValueError:
                self.non_json_lines += 1
                self.non_json_bytes += size + 1
                return
        slot = self._waiting.pop(message.get("id"), None) if isinstance(message, dict) else None
        if slot is not None:
            slot[1].append(message)
            slot[0].set()

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self._next += 1
        ident, done, box = self._next, anyio.Event(), []
        self._waiting[ident] = (done, box)
        line = {"jsonrpc": "2.0", "id": ident, "method": method, **({"params": params} if params is not None else {})}
        await self._stdin.send(json.dumps(line).encode() + b"\n")
        await done.wait()
        answer: dict[str, Any] = box[0]
        return answer

    async def notify(self, method: str) -> None:
        await self._stdin.send(json.dumps({"jsonrpc": "2.0", "method": method}).encode() + b"\n")


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Watch:
    """Pings back to back and samples RSS; each scenario reads and resets the maxima."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.block_s = 0.0
        self.rss = 0.0
        self.hangs = 0

    def reset(self) -> None:
        self.block_s, self.rss, self.hangs = 0.0, rss_mib(self.peer.proc.pid), 0

    async def ping_forever(self) -> None:
        while self.peer.proc.returncode is None:
            started = time.perf_counter()
            with anyio.move_on_after(PING_HANG_S) as scope:
                await self.peer.request("ping")
            if scope.cancelled_caught:
                self.hangs += 1
                with anyio.move_on_after(60):
                    await self.peer.request("ping")
            self.block_s = max(self.block_s, time.perf_counter() - started)
            await anyio.sleep(0.002)

    async def sample_forever(self) -> None:
        while self.peer.proc.returncode is None:
            self.rss = max(self.rss, rss_mib(self.peer.proc.pid))
            await anyio.sleep(0.01)


def performance() -> dict[str, Any]:
    deadlines = {"chat_s": DEADLINE_S, "embed_s": DEADLINE_S, "rerank_s": DEADLINE_S}
    return {"deadlines": deadlines, "breaker": {"failure_threshold": 1_000_000, "cooldown_s": 0.1}}


async def call(peer: Peer, tool: str, arguments: Mapping[str, Any]) -> tuple[str, bool]:
    """(what the client got, answered in time)."""
    with anyio.move_on_after(DEADLINE_S + CALL_GRACE_S):
        answer = await peer.request("tools/call", {"name": tool, "arguments": dict(arguments)})
        result = answer.get("result") or {}
        if "oversized" in answer:
            return f"an answer line of {answer['oversized'] / 2**20:.0f} MiB", True
        if "error" in answer:
            return f"JSON-RPC error: {json.dumps(answer['error'])[:160]}", True
        text = " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
        return ("tool error: " if result.get("isError") else "result: ") + text[:400], True
    return "no answer", False


async def until_healthy(peer: Peer) -> bool:
    """Each try starts from a serving gateway: a fault's after-effects (an adapter marked down) must not
    spill into the next scenario's figures."""
    with anyio.move_on_after(HEAL_S):
        for _ in range(int(HEAL_S / 0.5)):
            got, _ = await call(peer, "embed", EMBED)
            if got.startswith("result"):
                return True
            await anyio.sleep(0.5)
    return False


async def one_try(peer: Peer, watch: Watch, url: str, scenario: Scenario, outcome: Outcome) -> None:
    await anyio.to_thread.run_sync(remote_reset, url)
    if not await until_healthy(peer):
        outcome.unrecovered += 1
        return
    await anyio.to_thread.run_sync(remote_inject, url, Fault(**{**scenario.fault, "times": 1}))
    watch.reset()
    got, answered = await call(peer, scenario.tool, scenario.arguments)
    healthy, _ = await call(peer, "embed", EMBED)
    outcome.tries += 1
    outcome.hangs += watch.hangs + (0 if answered else 1)
    outcome.unrecovered += 0 if healthy.startswith("result") else 1
    outcome.crashes += 0 if peer.proc.returncode is None else 1
    outcome.loop_block_ms = max(outcome.loop_block_ms, watch.block_s * 1000)
    outcome.peak_rss_mib = max(outcome.peak_rss_mib, watch.rss)
    outcome.client_got = outcome.client_got or got


async def campaign(rounds: int, gateway_root: Path, only: list[Scenario]) -> tuple[list[Outcome], dict[str, float]]:
    home = Path(tempfile.mkdtemp(prefix="hostile-upstream-"))
    try:
        with spawn() as url:
            manifests = gateway_manifests(home / "manifests", url, performance())
            extra = {"PYTHONPATH": str(gateway_root), "MODEL_GATEWAY_LOG_LEVEL": "ERROR", LOOP_WATCH: "1"}
            env = gateway_env(home, extra)
            argv = [sys.executable, "-m", "server", "serve", "--manifests", str(manifests), "--no-fast-start"]
            async with (
                await anyio.open_file(home / "stderr.log", "wb") as err,
                await anyio.open_process(argv, cwd=gateway_root, env=env, stderr=err.wrapped) as proc,
            ):
                outcomes, totals = await _drive(Peer(proc), url, rounds, only)
            server = ServerFigures.read(proc.returncode, None, home / "stderr.log")  # stdout: read by the peer
            figures = {k: v for k, v in asdict(server).items() if k not in ("exit_code", "stdout_bytes")}
            totals.update({k: float(v) for k, v in figures.items() if v is not None})
            return outcomes, totals
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def _drive(peer: Peer, url: str, rounds: int, only: list[Scenario]) -> tuple[list[Outcome], dict[str, float]]:
    outcomes = [Outcome(s.name) for s in only]
    async with anyio.create_task_group() as tg:
        tg.start_soon(peer.read_forever)
        with anyio.fail_after(60):
            init = {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "hostile", "version": "1"},
            }
            await peer.request("initialize", init)
            await peer.notify("notifications/initialized")
            await call(peer, "embed", EMBED)  # warm: discovery done, upstream client built
        idle = rss_mib(peer.proc.pid)
        watch = Watch(peer)
        async with anyio.create_task_group() as watching:
            watching.start_soon(watch.ping_forever)
            watching.start_soon(watch.sample_forever)
            for _ in range(rounds):
                for scenario, outcome in zip(only, outcomes, strict=True):
                    if peer.proc.returncode is None:
                        await one_try(peer, watch, url, scenario, outcome)
            watching.cancel_scope.cancel()
        totals = {"idle_rss_mib": idle, "peak_rss_mib": rss_mib(peer.proc.pid, "VmHWM")}
        totals["non_json_stdout_lines"] = float(peer.non_json_lines)
        totals["non_json_stdout_bytes"] = float(peer.non_json_bytes)
        await anyio.sleep(0.2)  # the last ping's answer is read before the pipe closes
        totals["exit_code"] = float(await _close(peer))
        tg.cancel_scope.cancel()
    return outcomes, totals


async def _close(peer: Peer) -> int:
    """Close stdin as a host does; the server must exit on its own (-9: it had to be killed)."""
    if peer.proc.stdin is not None:
        await peer.proc.stdin.aclose()
    with anyio.move_on_after(30):
        return await peer.proc.wait()
    peer.proc.kill()
    await peer.proc.wait()
    return -9


def report(outcomes: list[Outcome], totals: dict[str, float]) -> str:
    head = f"{'scenario':<36} {'tries':>5} {'crash':>5} {'hang':>4} {'unrec':>5} {'block ms':>9} {'RSS MiB':>8}"
    lines = [head + "  client got (its end)"]
    for o in outcomes:
        lines.append(
            f"{o.scenario:<36} {o.tries:>5} {o.crashes:>5} {o.hangs:>4} {o.unrecovered:>5} "
            f"{o.loop_block_ms:>9.1f} {o.peak_rss_mib:>8.1f}  …{o.client_got[-100:]}"
        )
    tries = sum(o.tries for o in outcomes)
    lines.append(
        f"\ntries {tries}, crashes {sum(o.crashes for o in outcomes)}, hangs {sum(o.hangs for o in outcomes)}, "
        f"not recovered {sum(o.unrecovered for o in outcomes)}, "
        f"longest event-loop block {max((o.loop_block_ms for o in outcomes), default=0.0):.1f} ms, "
        f"peak RSS {totals['peak_rss_mib']:.1f} MiB (idle {totals['idle_rss_mib']:.1f} MiB), "
        f"non-JSON stdout lines {int(totals['non_json_stdout_lines'])}, exit code {int(totals['exit_code'])}"
    )
    return "\n".join(lines)


def run(plan: Plan, root: Path = ROOT) -> Result:
    """Every scenario `plan.n(ROUNDS)` times, as one part of `python -m benchmarks.hostile`."""
    started = time.perf_counter()
    outcomes, totals = anyio.run(campaign, plan.n(ROUNDS), root, scenarios())
    result = as_result(outcomes, totals)
    result.seconds = time.perf_counter() - started
    return result


def as_result(outcomes: list[Outcome], totals: Mapping[str, float]) -> Result:
    """The campaign's shared figures; a fault the server did not recover from is an example."""
    r = Result("upstream")
    r.tries = sum(o.tries for o in outcomes)
    r.crashes = sum(o.crashes for o in outcomes)
    r.hangs = sum(o.hangs for o in outcomes)
    r.non_json_bytes = int(totals.get("non_json_stdout_bytes", 0))
    r.unclean_exits = int(totals.get("exit_code", 0) != 0)
    r.longest_ping_ms = max((o.loop_block_ms for o in outcomes), default=0.0)
    r.loop_block_ms = totals.get("loop_block_ms")
    r.loop_busy_ms = totals.get("loop_busy_ms")
    r.idle_rss_mib, r.peak_rss_mib = totals.get("idle_rss_mib", 0.0), totals.get("peak_rss_mib", 0.0)
    r.stderr_bytes = int(totals.get("stderr_bytes", 0))
    r.longest_log_line = int(totals.get("longest_log_line", 0))
    for o in outcomes:
        if o.crashes or o.hangs or o.unrecovered:
            r.example(f"{o.scenario}: {o.crashes} crash(es), {o.hangs} hang(s), {o.unrecovered} not recovered")
    return r


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"tries per scenario (default {ROUNDS})")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--only", default="", help="comma-separated substrings of scenario names")
    parser.add_argument("--gateway-root", type=Path, default=ROOT, help="checkout whose server to run")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    chosen = [s for s in scenarios() if not wanted or any(w in s.name for w in wanted)]
    outcomes, totals = anyio.run(campaign, 1 if args.quick else args.rounds, args.gateway_root.resolve(), chosen)
    print(report(outcomes, totals))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"outcomes": [asdict(o) for o in outcomes], "totals": totals}, indent=1))


PART = Part("upstream", run, min_tries=ROUNDS * len(scenarios()))

if __name__ == "__main__":
    main()
