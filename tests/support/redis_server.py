"""A real `redis-server` on loopback for tests and benchmarks: a free port, a temp dir, no persistence.

Also a listener that accepts connections and never answers, to show what a hung Redis costs a call.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.proc import stop
from tests.support.processes import free_port

MISSING = "redis-server is not installed (Debian: apt-get install redis-server; `bash .ci/test` does it as root)"


def redis_server() -> str | None:
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin:/usr/local/bin")


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def run_redis(directory: Path, port: int | None = None, deadline_s: float = 10.0) -> Iterator[str]:
    """Start redis-server in `directory` (nothing saved); yields its URL, stops it on exit."""
    exe = redis_server()
    if exe is None:
        raise RuntimeError(MISSING)
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(directory), "--daemonize", "no", "--loglevel", "warning", "--logfile", ""]
    log = (directory / "redis.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    try:
        end = time.monotonic() + deadline_s
        while not _pong(port):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(
                    f"redis-server did not start on port {port}: {(directory / 'redis.log').read_text()}"
                )
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc, 5)
        log.close()


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """A loopback port whose connections are accepted by the kernel and never answered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"
