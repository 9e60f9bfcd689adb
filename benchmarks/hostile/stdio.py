"""The stdio part: hostile lines against `model-gateway serve` over its own pipes.

Two phases, both against the real process routing to a fake Ollama:

- steady: one long-lived server gets every family of `stdio_cases` round after round, then
  floods, then the huge lines; a ping closes every round (unanswered for `HANG_S`: a hang),
  and a real `embed` call every few rounds must still succeed. A server that dies is counted
  as a crash and started again.
- window: fresh servers (the handshake cache is warm by then) get a hostile burst in the same
  write as their `initialize`, so it lands while the SDK is still importing; then SIGTERM,
  after which the process must exit 0 having answered every request it took.

The server is asked to measure its own event loop (MODEL_GATEWAY_LOOP_WATCH=1) and reports
the longest block on stderr when it exits.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.hostile.harness import Server
from benchmarks.hostile.record import HANG_S, Part, Plan, Result
from benchmarks.hostile.stdio_cases import Case, Cases, rpc
from tests.support.fake_ollama import spawn
from tests.support.processes import ROOT, gateway_env, ollama_manifests

ROUNDS = 100
FLOOD = 1000
WINDOW_STARTS = 8
LEGIT_EVERY = 5  # rounds between real embed calls
WEDGED_S = 30.0  # a hang this long: the server is stopped and started again
OWED_WAIT_S = 15.0


def run(plan: Plan, root: Path = ROOT) -> Result:
    result = Result("stdio")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hostile-stdio-") as tmp, spawn() as url:
        home = Path(tmp)
        manifests = ollama_manifests(home / "manifests", url)
        if plan.line_cap is not None:
            limits = {"limits": {"max_line_bytes": plan.line_cap}}
            (manifests / "performance-config.json").write_text(json.dumps(limits))
        extra = {"MODEL_GATEWAY_LOOP_WATCH": "1", "MODEL_GATEWAY_LOG_LEVEL": "WARNING", "PYTHONPATH": str(root)}
        if plan.line_cap is not None:
            extra["MODEL_GATEWAY_MAX_LINE_BYTES"] = str(plan.line_cap)
        env = gateway_env(home, extra)
        argv = [sys.executable, "-m", "server", "serve", "--manifests", str(manifests)]
        cases = Cases(plan.seed, plan.line_cap)
        _steady(plan, result, cases, lambda: Server(argv, env, root))
        _window(plan, result, cases, lambda: Server(argv, env, root))
    result.seconds = time.perf_counter() - started
    return result


class _Run:
    """One server at a time, restarted after a crash; the figures every server adds to."""

    def __init__(self, result: Result, start: Any) -> None:
        self.result = result
        self._start = start
        self.server: Server = start()
        self.owed: list[Any] = []
        self.pings = 0

    def sample(self) -> None:
        _, peak = self.server.rss_mib()
        self.result.peak_rss_mib = max(self.result.peak_rss_mib, peak)

    def check(self, what: str) -> None:
        """A ping must come back within HANG_S; a dead server is a crash and is started again."""
        self.pings += 1
        self.result.tries += 1
        rtt = self.server.ping(f"hping-{self.pings}", HANG_S) if self.server.alive() else None
        if rtt is None and self.server.alive():
            self.result.hangs += 1
            self.result.example(f"hang after {what}")
            if self.server.ping(f"hping-{self.pings}-late", WEDGED_S) is None:
                self._restart(f"wedged after {what}")
            return
        if rtt is None:
            self.result.crashes += 1
            self.result.example(f"crash (exit {self.server.proc.poll()}) after {what}: {_stderr_excerpt(self.server)}")
            self._restart(None)
            return
        self.result.longest_ping_ms = max(self.result.longest_ping_ms, rtt)
        self.sample()

    def send(self, case: Case) -> None:
        if case.owed is not None:
            self.server.track(case.owed)
            self.owed.append(case.owed)
        self.result.tries += max(1, case.data.count(b"\n"))
        self.server.send(case.data)

    def _restart(self, why: str | None) -> None:
        self.finish(signal_it=False)
        if why is not None:
            self.result.example(why)
        self.server = self._start()
        handshake(self.server)

    def finish(self, *, signal_it: bool) -> None:
        """Stop the server (SIGTERM when asked), then count what it never answered and what it wrote."""
        server, r = self.server, self.result
        if signal_it and server.alive():
            code = server.terminate(30)
            if code != 0:
                r.unclean_exits += 1
                r.example(f"exit code {code} after SIGTERM")
        server.close()
        answers = server.answers
        with answers.lock:
            r.unanswered += sum(1 for rid in self.owed if rid not in answers.seen_ids)
            r.non_json_bytes += answers.non_json_bytes
            r.largest_reply_bytes = max(r.largest_reply_bytes, answers.largest)
            r.largest_error_bytes = max(r.largest_error_bytes, answers.largest_error)
            bad = list(answers.bad_examples)
        for line in bad:
            r.example(f"non-JSON stdout: {line!r}")
        r.stderr_bytes += server.stderr_bytes
        r.longest_log_line = max(r.longest_log_line, server.longest_stderr_line)
        if server.loop_block_ms is not None:
            r.loop_block_ms = max(r.loop_block_ms or 0.0, server.loop_block_ms)
        if server.loop_busy_ms is not None:
            r.loop_busy_ms = max(r.loop_busy_ms or 0.0, server.loop_busy_ms)
        self.owed = []


def handshake(server: Server) -> None:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "hostile", "version": "0"}}
    server.request("init", "initialize", params, 60)
    server.send(rpc(method="notifications/initialized"))
    server.request("list", "tools/list", {}, 60)


def _legit_call(run: _Run, n: int) -> None:
    answer = run.server.request(f"legit-{n}", "tools/call", {"name": "embed", "arguments": {"input": "hello"}}, 30)
    result = answer.get("result") if isinstance(answer, dict) else None
    if not isinstance(result, dict) or result.get("isError"):
        run.result.example(f"a real embed call failed: {json.dumps(answer)[:100]}")
        run.result.unanswered += 1


def _steady(plan: Plan, result: Result, cases: Cases, start: Any) -> None:
    run = _Run(result, start)
    handshake(run.server)
    for n in range(3):
        _legit_call(run, -n - 1)
    time.sleep(0.5)
    result.idle_rss_mib = run.server.rss_mib()[0]
    for rnd in range(plan.n(ROUNDS)):
        for family in cases.families():
            for case in family():
                run.send(case)
        run.check(f"round {rnd}")
        if rnd % LEGIT_EVERY == 0:
            _legit_call(run, rnd)
    for case in cases.floods(plan.n(FLOOD)):
        run.send(case)
        lines = case.data.count(b"\n")
        run.check(f"a {case.kind} of {lines} lines")
    _huge(run, cases.huge_lines())
    _legit_call(run, 10**6)
    _wait_owed(run)
    run.sample()
    run.finish(signal_it=True)


def _huge(run: _Run, huge: Iterable[Case]) -> None:
    for case in huge:
        run.send(case)
        run.check(f"a line of {len(case.data):,} bytes")


def _wait_owed(run: _Run) -> None:
    deadline = time.monotonic() + OWED_WAIT_S
    answers = run.server.answers
    while time.monotonic() < deadline and run.server.alive():
        with answers.lock:
            if all(rid in answers.seen_ids for rid in run.owed):
                return
        time.sleep(0.1)


def _window(plan: Plan, result: Result, cases: Cases, start: Any) -> None:
    """Fresh servers, hostile lines in the same write as `initialize`, then SIGTERM."""
    for n in range(plan.n(WINDOW_STARTS)):
        run = _Run(result, start)
        burst = [
            Case("window", rpc(id="w-init", method="initialize", params=_init_params()), "w-init"),
            Case("window", b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}\n'),
            Case("window", b'{"jsonrpc":"2.0","id":Infinity,"method":"ping"}\n'),
            Case("window", b"[" * 2048 + b"\n"),
            *cases.nesting(),
            *cases.broken_json(),
            *cases.odd_ids(),
            *cases.names(),
            Case("window", rpc(method="notifications/initialized")),
            Case("window", rpc(id="w-list", method="tools/list"), "w-list"),
        ]
        for case in burst:
            if case.owed is not None:
                run.server.track(case.owed)
                run.owed.append(case.owed)
            result.tries += 1
        run.server.send(b"".join(case.data for case in burst))
        run.check(f"the window burst of start {n}")
        if n % 2:  # the other half is stopped after serving a call
            _legit_call(run, 2 * 10**6 + n)
        run.sample()
        run.finish(signal_it=True)


def _init_params() -> dict[str, Any]:
    return {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "hostile", "version": "0"}}


def _stderr_excerpt(server: Server) -> str:
    tail = [line for line in server.stderr_tail if line.strip()]
    return tail[-1].decode("utf-8", "replace").strip()[:100] if tail else ""


PART = Part("stdio", run, min_tries=5000)
