"""Start real `model-gateway serve` processes for end-to-end tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mcp.client.stdio import StdioServerParameters

from tests.support.gateway import disabled_adapter
from tests.support.proc import stop

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ollama_manifests(root: Path, ollama_url: str, extra_disable: tuple[str, ...] = ("mlx",)) -> Path:
    """A user manifests dir that routes everything to an Ollama at `ollama_url`."""
    (root / "adapters").mkdir(parents=True, exist_ok=True)
    (root / "adapters" / "ollama.json").write_text(
        json.dumps(
            {
                "name": "ollama",
                "kind": "ollama",
                "endpoint": ollama_url,
                "models": [
                    {"name": "all-minilm:latest", "capabilities": ["embed", "rerank"]},
                    {"name": "llama3.2:1b", "capabilities": ["chat"]},
                ],
            }
        )
    )
    for name in extra_disable:
        (root / "adapters" / f"{name}.json").write_text(json.dumps(disabled_adapter(name)))
    (root / "routes.json").write_text(
        json.dumps(
            {
                "routes": {
                    "embed": ["ollama/all-minilm:latest"],
                    "rerank": ["ollama/all-minilm:latest"],
                    "chat": ["ollama/llama3.2:1b"],
                },
            }
        )
    )
    return root


def gateway_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What real stdio hosts pass (HOME, PATH, ...) plus what the test asks for."""
    env = {k: os.environ[k] for k in ("PATH", "LANG", "TERM", "USER", "LOGNAME", "SHELL") if k in os.environ}
    env["HOME"] = str(home)
    env["MODEL_GATEWAY_AUDIT_KEY"] = "11" * 32
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def gateway_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "server", "serve", *args]


def stdio_params(
    home: Path, manifests: Path | None, *extra: str, env: Mapping[str, str] | None = None
) -> StdioServerParameters:
    argv = gateway_argv(*(["--manifests", str(manifests)] if manifests else []), *extra)
    return StdioServerParameters(command=argv[0], args=argv[1:], env=gateway_env(home, env), cwd=str(ROOT))


def wait_http(url: str, deadline_s: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {deadline_s}s")


@contextlib.contextmanager
def http_gateway(
    home: Path,
    manifests: Path | None,
    transport: str,
    *extra: str,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[str]:
    """Run `serve` on a free loopback port; yields the base URL and stops the process on exit.

    `log`: a file that receives the process's stderr (else it is discarded).
    """
    port = free_port()
    argv = gateway_argv(
        "--transport", transport, "--port", str(port), *(["--manifests", str(manifests)] if manifests else []), *extra
    )
    with open(log or os.devnull, "wb") as err:
        proc = subprocess.Popen(argv, env=gateway_env(home, env), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", proc=proc)
        yield base
    finally:
        stop(proc, 15)
