"""Several gateway processes on one HOME keep one audit trail that verifies, also when killed at random.

This is what a user with three MCP hosts open has: three `serve` processes,
started and killed at will, writing one state dir. (A longer campaign with
printed figures: `python -m benchmarks.many_processes`.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from server.app import build_server
from server.audit_verify import verify
from server.config import load_settings
from tests.support.gateway import disabled_adapter
from tests.support.many import Drive, Figures, campaign_manifests, cli_verify, kill_campaign, run_once, unrecorded
from tests.support.processes import ROOT, gateway_env, ollama_manifests

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
KEY = bytes.fromhex("11" * 32)  # what gateway_env passes as MODEL_GATEWAY_AUDIT_KEY
SLOTS = 4
KILLS = 20


def _log(home: Path) -> Path:
    return home / ".local" / "state" / "model-gateway" / "audit" / "audit.jsonl"


async def test_four_concurrent_stdio_gateways_on_one_home_keep_one_trail_with_every_answer(
    tmp_path: Path, ollama_url: str
) -> None:
    manifests = campaign_manifests(tmp_path / "manifests", ollama_url)
    figures = Figures()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i in range(SLOTS):
                tg.start_soon(run_once, tmp_path, manifests, f"p{i}", figures, Drive())
    assert not figures.failed_starts and not figures.errors, (figures.failed_starts, figures.errors[:3])
    assert len(figures.answered) == SLOTS * (1 + 2 * 6)
    assert unrecorded(_log(tmp_path), figures.answered) == []
    checked = cli_verify(tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("ok: ")
    report = verify(_log(tmp_path), KEY)
    assert report.ok and report.segments > 1  # writers rotated the shared file under one another


async def test_random_sigkills_of_random_gateways_lose_no_answered_call_and_every_restart_serves(
    tmp_path: Path, ollama_url: str
) -> None:
    manifests = campaign_manifests(tmp_path / "manifests", ollama_url)
    with anyio.fail_after(240):
        figures = await kill_campaign(tmp_path, manifests, slots=3, kills=KILLS, seed=12, deadline_s=150)
    assert figures.kills >= KILLS, f"only {figures.kills} kills in the time allowed"
    assert figures.failed_starts == []
    assert figures.errors == []
    assert len(figures.answered) > figures.starts  # calls were answered between kills, not only first calls
    assert unrecorded(_log(tmp_path), figures.answered) == []
    checked = cli_verify(tmp_path)
    if checked.returncode != 0:  # only a torn last line may be left by a kill mid-write, and repair cuts it
        assert "torn" in checked.stdout and "also:" not in checked.stdout, checked.stdout
        checked = cli_verify(tmp_path, "--repair")
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_gateway_in_front_of_a_gateway_on_one_home_keeps_one_trail(tmp_path: Path, ollama_url: str) -> None:
    """The downstream stdio gateway inherits the front's HOME: both write the same trail."""
    down = ollama_manifests(tmp_path / "down-manifests", ollama_url)
    command = [sys.executable, "-m", "server", "serve", "--manifests", str(down)]
    front = tmp_path / "front-manifests"
    (front / "adapters").mkdir(parents=True)
    models = [{"name": "all-minilm:latest", "capabilities": ["embed", "rerank"]}]
    spec = {"name": "down", "kind": "mcp", "models": models, "command": command, "env": gateway_env(tmp_path)}
    (front / "adapters" / "down.json").write_text(json.dumps({**spec, "cwd": str(ROOT)}))
    (front / "adapters" / "mlx.json").write_text(json.dumps(disabled_adapter("mlx")))
    (front / "routes.json").write_text('{"routes": {"embed": ["down/all-minilm:latest"]}}')
    settings = load_settings(manifests_dir=front, env=gateway_env(tmp_path))
    with anyio.fail_after(90):
        async with Client(build_server(settings)) as client:
            for i in range(10):
                result = await client.call_tool("embed", {"input": [f"text {i}"]})
                assert not result.is_error, result.content
    report = verify(_log(tmp_path), KEY)
    assert report.ok, report.damage
    # both processes wrote it: the front's records and the downstream's, ten calls each
    assert report.records >= 2 * 10 * 2
