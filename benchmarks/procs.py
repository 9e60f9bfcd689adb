"""Processes under test: how to start them, find them and read their memory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from mcp.client.stdio import StdioServerParameters

from tests.support.proc import stop
from tests.support.processes import ROOT, free_port, gateway_env, wait_http

QUIET = {"MODEL_GATEWAY_LOG_LEVEL": "WARNING"}


def env_for(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a stdio host passes, plus quiet logs; HOME is a throwaway dir per run."""
    return gateway_env(home, {**QUIET, **(extra or {})})


def module_params(module: str, home: Path, *args: str, env: Mapping[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", module, *args], env=env_for(home, env), cwd=str(ROOT)
    )


def stub_params(home: Path, *args: str) -> StdioServerParameters:
    return module_params("benchmarks.stub", home, *args)


def bare_params(home: Path) -> StdioServerParameters:
    return module_params("benchmarks.bare", home)


def gateway_params(home: Path, manifests: Path | None, env: Mapping[str, str] | None = None) -> StdioServerParameters:
    args = ["serve", *(["--manifests", str(manifests)] if manifests else [])]
    return module_params("server", home, *args, env=env)


@contextlib.contextmanager
def http_module(
    module: str, home: Path, *args: str, ready_path: str = "/mcp", env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Run `python -m module --transport streamable-http --port P ...`; yields the base URL."""
    port = free_port()
    argv = [sys.executable, "-m", module, *args, "--transport", "streamable-http", "--port", str(port)]
    proc = subprocess.Popen(
        argv,
        env=env_for(home, env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + ready_path, proc=proc)
        yield base
    finally:
        stop(proc)


@contextlib.contextmanager
def scratch_home(prefix: str = "bench-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def children(parent: int | None = None) -> list[int]:
    """Direct child pids of `parent` (default: this process), from /proc."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces or parentheses: fields start after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def child_running(needle: str) -> int:
    """The pid of this process's child whose command line contains `needle`."""
    for pid in children():
        if needle in cmdline(pid):
            return pid
    raise LookupError(f"no child process runs {needle!r}")


def memory_mib(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out
