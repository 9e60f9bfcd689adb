"""A server process on the other end of two pipes: what it answers, whether it lives, what it costs.

Every stdout line is checked as it arrives: a line that is not one strict JSON value (no
NaN, no Infinity) holding a JSON-RPC message, or a batch of them, counts as non-JSON bytes.
Answers are kept by id only for the ids the driver waits for; everything else is counted and
dropped, so a flood of answers costs the harness nothing. stderr is drained into counters and
the last few lines (the server's own event-loop report among them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.proc import stop

LOOP_REPORT = re.compile(rb"event loop: longest block ([0-9.]+) ms(?: .*longest busy block ([0-9.]+) ms)?")
_TAIL_LINES = 200


def strict_json(line: bytes) -> Any:
    """The value of one line, refusing what JSON itself refuses (NaN, Infinity)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def is_jsonrpc(value: Any) -> bool:
    messages = value if isinstance(value, list) and value else [value]
    return all(isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in messages)


@dataclass
class Answers:
    """What came back on stdout, indexed by the ids the driver asked to keep."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    wanted: dict[Any, threading.Event] = field(default_factory=dict)
    got: dict[Any, Any] = field(default_factory=dict)
    seen_ids: set[Any] = field(default_factory=set)  # every answered id among `tracked`
    tracked: set[Any] = field(default_factory=set)
    null_id_errors: int = 0
    messages: int = 0
    non_json_bytes: int = 0
    largest: int = 0
    largest_error: int = 0  # the longest error answer: an echo of the input would show here
    bad_examples: deque[bytes] = field(default_factory=lambda: deque(maxlen=4))


class Server:
    """`argv` started with pipes on all three descriptors; call `close()` (or use as a context manager)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.answers = Answers()
        self.stderr_bytes = 0
        self.longest_stderr_line = 0
        self.stderr_tail: deque[bytes] = deque(maxlen=_TAIL_LINES)
        self.loop_block_ms: float | None = None
        self.loop_busy_ms: float | None = None
        self.stopped_on_purpose = False
        self._write_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, data: bytes) -> bool:
        """Write bytes to the server's stdin; False when the server is gone."""
        assert self.proc.stdin is not None
        try:
            with self._write_lock:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def expect(self, request_id: Any) -> threading.Event:
        """Keep the answer to `request_id`; the event is set when it arrives."""
        event = threading.Event()
        with self.answers.lock:
            self.answers.wanted[request_id] = event
        return event

    def track(self, request_id: Any) -> None:
        """Note only whether `request_id` is ever answered."""
        with self.answers.lock:
            self.answers.tracked.add(request_id)

    def take(self, request_id: Any) -> Any:
        with self.answers.lock:
            self.answers.wanted.pop(request_id, None)
            return self.answers.got.pop(request_id, None)

    def ping(self, request_id: str, timeout_s: float) -> float | None:
        """Round trip of one ping in ms, or None when unanswered within `timeout_s`."""
        event = self.expect(request_id)
        started = time.perf_counter()
        if not self.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "ping"}).encode() + b"\n"):
            self.take(request_id)
            return None
        answered = event.wait(timeout_s)
        self.take(request_id)
        return (time.perf_counter() - started) * 1000 if answered else None

    def request(self, request_id: Any, method: str, params: Any, timeout_s: float) -> Any:
        event = self.expect(request_id)
        msg = {"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})}
        self.send(json.dumps(msg).encode() + b"\n")
        event.wait(timeout_s)
        return self.take(request_id)

    def rss_mib(self) -> tuple[float, float]:
        """(current, peak) resident set size in MiB; zeros once the process is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0.0, 0.0
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

        def mib(name: str) -> float:
            return int(fields.get(name, "0 kB").split()[0]) / 1024

        return mib("VmRSS"), mib("VmHWM")

    def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM, then wait; the exit code, or None when it had to be killed."""
        self.stopped_on_purpose = True
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def close(self) -> None:
        self.stopped_on_purpose = True
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self.alive():
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                stop(self.proc)
        for t in self._threads:
            t.join(10)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        while chunk := os.read(fd, 1 << 20):
            buf += chunk
            start = 0
            while (end := buf.find(b"\n", start)) >= 0:
                self._line(bytes(buf[start:end]))
                start = end + 1
            del buf[:start]
        if buf:
            self._line(bytes(buf))

    def _line(self, line: bytes) -> None:
        a = self.answers
        try:
            value = strict_json(line)
            ok = is_jsonrpc(value)
        except (ValueError, RecursionError):
            ok, value = False, None
        with a.lock:
            a.largest = max(a.largest, len(line) + 1)
            if not ok:
                a.non_json_bytes += len(line) + 1
                a.bad_examples.append(line[:120])
                return
            for msg in value if isinstance(value, list) else [value]:
                a.messages += 1
                if "error" in msg:
                    a.largest_error = max(a.largest_error, len(json.dumps(msg)))
                if "id" not in msg or "method" in msg:
                    continue
                rid = msg["id"]
                key = rid if isinstance(rid, str | int) else json.dumps(rid)
                if rid is None and "error" in msg:
                    a.null_id_errors += 1
                if key in a.tracked:
                    a.seen_ids.add(key)
                if key in a.wanted:
                    a.got[key] = msg
                    a.wanted[key].set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_bytes += len(line)
            self.longest_stderr_line = max(self.longest_stderr_line, len(line))
            self.stderr_tail.append(line[:400])
            m = LOOP_REPORT.search(line)
            if m is not None:
                self.loop_block_ms = max(self.loop_block_ms or 0.0, float(m.group(1)))
                if m.group(2) is not None:
                    self.loop_busy_ms = max(self.loop_busy_ms or 0.0, float(m.group(2)))


@dataclass
class ServerFigures:
    """What the server process left behind: its exit, its stdout (should be empty) and its stderr."""

    exit_code: int | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    longest_log_line: int = 0
    loop_block_ms: float | None = None
    loop_busy_ms: float | None = None

    @classmethod
    def read(cls, exit_code: int | None, stdout: Path | None, stderr: Path) -> ServerFigures:
        """From the files the process wrote its stdout (None: read elsewhere) and stderr to."""
        lines = stderr.read_bytes().splitlines() if stderr.exists() else []
        figures = cls(exit_code, stdout.stat().st_size if stdout is not None and stdout.exists() else 0)
        figures.stderr_bytes = sum(len(line) + 1 for line in lines)
        figures.longest_log_line = max((len(line) for line in lines), default=0)
        for line in lines:
            found = LOOP_REPORT.search(line)
            if found is not None:
                figures.loop_block_ms = float(found.group(1))
                figures.loop_busy_ms = float(found.group(2)) if found.group(2) else None
        return figures
