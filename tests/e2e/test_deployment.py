"""A team deployment, for real: redis-server, HAProxy health-checking /health, three stateless replicas.

Shows one quota shared exactly by every replica, answers cached by one replica
served by the others, and a replica killed with SIGKILL under load: HAProxy
routes around it, no answered call is missing its audit finish record, and
each replica's audit trail verifies on its own. The tests share one deployment
and run in file order: the last one kills a replica.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from server.audit import evidence
from server.audit_verify import verify
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

pytestmark = pytest.mark.anyio
KEY = bytes.fromhex("11" * 32)  # what gateway_env passes as MODEL_GATEWAY_AUDIT_KEY to every replica
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
    perf = {"rate_limits": {"rules": RULES}, "shared_state": {"deadline_ms": 2000}}
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
        lines = [json.loads(x) for p in sorted(log.parent.glob("audit.jsonl*")) for x in p.read_text().splitlines()]
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


@pytest.mark.e2e
@pytest.mark.deployment
async def test_a_replica_killed_under_load_loses_no_answered_call_and_every_trail_verifies(team: Deployment) -> None:
    answered: dict[str, str] = {}  # text -> evidence hash of the answer the client got
    after_down: list[bool] = []  # per call started once HAProxy had marked the victim down: answered?
    enough, down = anyio.Event(), anyio.Event()

    async def worker(w: int) -> None:
        n = 0
        for _ in range(10):  # sessions: a call lost on the way closes one
            late = False
            try:
                async with session(team.lb, "load-user") as client:
                    while n < 40:
                        text, n, late = f"load worker {w} call {n}", n + 1, down.is_set()
                        r = await client.call_tool("embed", {"input": [text]})
                        if not r.is_error:
                            answered[text] = response_hash(r.structured_content or {})
                        if late:
                            after_down.append(not r.is_error)
                        if len(answered) >= 30:
                            enough.set()
                    return
            except Exception:  # a call lost on the way: never answered, so nothing to find; open a new session
                if late:
                    after_down.append(False)

    async def kill_r2() -> None:
        await enough.wait()
        team.replicas["r2"].send_signal(signal.SIGKILL)
        marked = partial(team.marked, "r2", "DOWN")
        await anyio.to_thread.run_sync(wait_until, marked, 10, "HAProxy did not mark the killed replica down")
        down.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_r2)
            for w in range(4):
                tg.start_soon(worker, w)
    assert team.replicas["r2"].wait(5) == -signal.SIGKILL
    finished, _ = trail(team)
    ok = {(f.request, f.response) for f in finished if f.outcome == "ok"}
    lost = [t for t, answer in answered.items() if (request_hash(t), answer) not in ok]
    assert len(answered) >= 100 and not lost, f"answered calls without a matching finish record: {lost[:3]}"
    assert after_down and all(after_down)  # once marked down, the LB sent nothing to the dead replica
    for replica, log in team.audit_logs().items():
        report = verify(log, KEY)
        assert report.ok, f"{replica}: {report.damage}"
