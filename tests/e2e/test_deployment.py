"""A team deployment, for real: redis-server, HAProxy health-checking /health, three stateless replicas.

Shows one quota shared exactly by every replica, answers cached by one replica
served by the others, and a replica killed with SIGKILL under load: HAProxy
routes around it and no answered call is missing its audit finish record.
Then each replica's trail verifies on its own, `model-gateway audit verify`
over the folder of every replica's state dir checks each of them in one run,
and an edit in one copied trail is reported for that trail alone. The tests
share one deployment and run in file order: the last two follow the kill.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from server.audit import evidence
from server.audit_chain import segment_files
from tests.support.deployment import (
    Deployment,
    deployment,
    missing_tools,
    readme_haproxy,
    readme_unit,
    token_for,
    wait_until,
)
from tests.support.fake_ollama import remote_counts
from tests.support.processes import ROOT, gateway_env

pytestmark = pytest.mark.anyio
BURST = 8
PRINCIPALS = ("burst-team", "cache-user", "load-user")
RULES = [{"id": "team-burst", "principal": "burst-*", "tool": "embed", "rate_per_s": 0.001, "burst": BURST}]
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, ollama_url: str) -> Iterator[Deployment]:
    why = missing_tools()
    if why is not None:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("team")
    # a generous Redis deadline: this shows exactness on a shared 2-core machine; deadlines have their own tests
    perf = {"rate_limits": {"rules": RULES}, "shared_state": {"deadline_ms": 2000}, "response_cache": {"enabled": True}}
    with deployment(root, ollama_url, 3, PRINCIPALS, perf) as found:
        yield found


@asynccontextmanager
async def session(lb: str, principal: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token_for(principal)}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(lb + "/mcp", http_client=http)) as client,
    ):
        yield client


def request_hash(text: str) -> str:
    return evidence({"input": [text], "model": None, "dimensions": None})


def response_hash(result: dict[str, Any]) -> str:
    vectors = orjson.dumps(result["embeddings"])
    return evidence({"model": result["model"], "vectors_sha256": hashlib.sha256(vectors).hexdigest()})


@dataclass(frozen=True)
class Finished:
    replica: str
    principal: str
    request: str
    response: str | None
    outcome: str
    cache: str | None


def trail(team: Deployment) -> tuple[list[Finished], list[dict[str, Any]]]:
    """Every finish record (joined to its start) and every denial, from every replica's log."""
    finished, denied = [], []
    for replica, log in team.audit_logs().items():
        lines = [json.loads(x) for _, p in segment_files(log) for x in p.read_text().splitlines()]
        starts = {r["call_id"]: r["request_sha256"] for r in lines if r.get("event") == "start"}
        denied += [r | {"replica": replica} for r in lines if r.get("event") == "deny"]
        finished += [
            Finished(replica, r["principal"], starts[r["call_id"]], r["response_sha256"], r["outcome"], r.get("cache"))
            for r in lines
            if r.get("event") == "finish"
        ]
    return finished, denied


def test_the_readme_shows_the_haproxy_config_and_unit_the_deployment_test_renders() -> None:
    section = README.read_text().split("## Team deployment", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL)
    assert ("haproxy", readme_haproxy()) in blocks
    assert ("ini", readme_unit()) in blocks


@pytest.mark.e2e
@pytest.mark.deployment
async def test_a_burst_of_3n_across_replicas_admits_exactly_the_quota_of_n(team: Deployment) -> None:
    outcomes: list[str] = []

    async def client_burst(c: int) -> None:
        async with session(team.lb, "burst-team") as client, anyio.create_task_group() as tg:
            for n in range(BURST):
                tg.start_soon(one, client, f"burst client {c} call {n}")

    async def one(client: Client, text: str) -> None:
        r = await client.call_tool("embed", {"input": [text]})
        refused = r.is_error and "rate limit 'team-burst' reached for burst-team" in r.content[0].text
        outcomes.append("refused" if refused else r.content[0].text if r.is_error else "admitted")

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for c in range(3):
                tg.start_soon(client_burst, c)
    finished, denied = trail(team)
    assert outcomes.count("admitted") == BURST and outcomes.count("refused") == 2 * BURST, outcomes
    served_by = {f.replica for f in finished if f.principal == "burst-team" and f.outcome == "ok"}
    refused_by = {d["replica"] for d in denied if d["principal"] == "burst-team" and d["rule"] == "rate_limited"}
    assert len(served_by) >= 2 and len(refused_by) >= 2  # one quota, spent and enforced by several replicas


@pytest.mark.e2e
@pytest.mark.deployment
async def test_an_answer_cached_by_one_replica_is_served_by_the_others(team: Deployment, ollama_url: str) -> None:
    text = "the same question asked six times"
    before = (await anyio.to_thread.run_sync(remote_counts, ollama_url)).get("/api/embed", 0)
    with anyio.fail_after(60):
        async with session(team.lb, "cache-user") as client:
            results = [await client.call_tool("embed", {"input": [text]}) for _ in range(6)]
    after = (await anyio.to_thread.run_sync(remote_counts, ollama_url)).get("/api/embed", 0)
    finished, _ = trail(team)
    mine = [f for f in finished if f.principal == "cache-user" and f.request == request_hash(text)]
    assert after - before == 1  # one upstream request for six calls
    assert sorted(f.cache or "" for f in mine) == ["hit"] * 5 + ["miss"]
    assert len({f.replica for f in mine if f.cache == "hit"}) >= 2
    assert {f.response for f in mine} == {response_hash(r.structured_content or {}) for r in results}
    assert len({f.response for f in mine}) == 1  # a hit carries the served answer's evidence hash


@dataclass
class Load:
    """Workers embedding new texts through the LB; `down` is set once HAProxy marks the killed replica down."""

    lb: str
    answered: dict[str, str] = field(default_factory=dict)  # text -> evidence hash of the answer the client got
    after_down: list[bool] = field(default_factory=list)  # per call started once the victim was down: answered?
    enough: anyio.Event = field(default_factory=anyio.Event)
    down: anyio.Event = field(default_factory=anyio.Event)

    async def worker(self, w: int) -> None:
        n = 0
        for _ in range(10):  # sessions: a call lost on the way closes one
            late = False
            try:
                async with session(self.lb, "load-user") as client:
                    while n < 40:
                        text, n, late = f"load worker {w} call {n}", n + 1, self.down.is_set()
                        self.note(text, late, await client.call_tool("embed", {"input": [text]}))
                    return
            except Exception:  # a call lost on the way: never answered, so nothing to find; open a new session
                if late:
                    self.after_down.append(False)

    def note(self, text: str, late: bool, r: CallToolResult) -> None:
        if not r.is_error:
            self.answered[text] = response_hash(r.structured_content or {})
        if late:
            self.after_down.append(not r.is_error)
        if len(self.answered) >= 30:
            self.enough.set()


@pytest.mark.e2e
@pytest.mark.deployment
async def test_a_replica_killed_under_load_is_routed_around_and_loses_no_answered_call(team: Deployment) -> None:
    load = Load(team.lb)

    async def kill_r2() -> None:
        await load.enough.wait()
        team.replicas["r2"].send_signal(signal.SIGKILL)
        marked = partial(team.marked, "r2", "DOWN")
        await anyio.to_thread.run_sync(wait_until, marked, 10, "HAProxy did not mark the killed replica down")
        load.down.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_r2)
            for w in range(4):
                tg.start_soon(load.worker, w)
    assert team.replicas["r2"].wait(5) == -signal.SIGKILL
    finished, _ = trail(team)
    ok = {(f.request, f.response) for f in finished if f.outcome == "ok"}
    lost = [t for t, answer in load.answered.items() if (request_hash(t), answer) not in ok]
    assert len(load.answered) >= 100 and not lost, f"answered calls without a matching finish record: {lost[:3]}"
    assert load.after_down and all(load.after_down)  # once marked down, the LB sent nothing to the dead replica


@pytest.mark.e2e
@pytest.mark.deployment
def test_each_replica_trail_verifies_alone_and_audit_verify_over_their_folder_checks_them_all(
    team: Deployment, tmp_path: Path
) -> None:
    logs = team.audit_logs()  # runs after the kill: r2's trail ends where SIGKILL cut it
    for replica, state_dir in team.state_dirs.items():
        alone = audit_verify(state_dir, team.state_root)
        assert alone["ok"] and alone["path"] == str(logs[replica]) and alone["records"] > 0, alone["summary"]
    together = audit_verify(team.state_root, team.state_root)
    assert together["ok"], together["summary"]
    assert sorted(t["path"] for t in together["trails"]) == sorted(str(p) for p in logs.values())
    assert all(t["ok"] and t["records"] > 0 for t in together["trails"])
    copy = tmp_path / "copied"  # the replicas' state dirs copied under one parent, one finish record edited
    shutil.copytree(team.state_root, copy)
    edited = copy / logs["r3"].relative_to(team.state_root)
    lines = edited.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if '"event":"finish"' in line and '"outcome":"ok"' in line)
    lines[at] = lines[at].replace('"outcome":"ok"', '"outcome":"no"')
    edited.write_text("".join(lines))
    damaged = audit_verify(copy, team.state_root, expect_ok=False)
    found = {t["path"]: (t["ok"], (t["damage"] or {}).get("kind")) for t in damaged["trails"]}
    assert found == {
        str(copy / p.relative_to(team.state_root)): (False, "edited") if r == "r3" else (True, None)
        for r, p in logs.items()
    }


def audit_verify(path: Path, home: Path, expect_ok: bool = True) -> dict[str, Any]:
    """`model-gateway audit verify PATH --json`, as an operator runs it (the replicas' shared key in the env)."""
    argv = [sys.executable, "-m", "server", "audit", "verify", str(path), "--json"]
    done = subprocess.run(argv, env=gateway_env(home), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == (0 if expect_ok else 1), done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result
