"""Loopback upstreams as processes: the fake Ollama and the fake OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.fake_ollama import remote_counts, remote_reset, spawn
from tests.support.proc import stop
from tests.support.processes import ROOT, free_port, ollama_manifests, wait_http

OLLAMA_MODEL = "all-minilm:latest"
OPENAI_MODEL = "text-embedding-3-small"

__all__ = ["fake_ollama", "fake_openai", "gateway_manifests", "reset_upstream", "upstream_embeds"]

fake_ollama = spawn


@contextlib.contextmanager
def fake_openai() -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.fake_openai", "--port", str(port)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/models", proc=proc)
        yield url
    finally:
        stop(proc)


def gateway_manifests(root: Path, ollama_url: str, performance: dict[str, Any] | None = None) -> Path:
    """Manifests routing every capability to the fake Ollama, with optional performance overrides.

    The response cache is off unless asked for: a benchmark repeating one call measures it served every time.
    """
    out = ollama_manifests(root, ollama_url)
    shipped = json.loads((ROOT / "manifests" / "performance-config.json").read_text())
    shipped["response_cache"]["enabled"] = False
    for section, values in (performance or {}).items():
        shipped[section] = {**shipped[section], **values}
    (out / "performance-config.json").write_text(json.dumps(shipped))
    return out


def upstream_embeds(url: str) -> int:
    return remote_counts(url).get("/api/embed", 0)


def reset_upstream(url: str) -> None:
    remote_reset(url)
