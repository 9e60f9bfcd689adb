"""A client that hangs up mid-call cancels it; SIGTERM lets calls in flight finish. Real processes, real sockets."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.support.hanging_upstream import HangingOllama
from tests.support.mcp_http import INITIALIZED, initialize_message, open_session, post, sse_session, tool_call
from tests.support.processes import (
    ROOT,
    free_port,
    gateway_argv,
    gateway_env,
    http_gateway,
    ollama_manifests,
    wait_http,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CALLS = {
    "embed": {"input": ["hello"]},
    "chat": {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
}


def audit_path(home: Path) -> Path:
    return home / ".local" / "state" / "model-gateway" / "audit" / "audit.jsonl"


async def finish_record(home: Path, tool: str) -> dict[str, Any]:
    """The audit's finish record of the first `tool` call, once written."""
    while True:
        path = audit_path(home)
        lines = path.read_text().splitlines() if path.exists() else []
        for record in map(json.loads, lines):
            if record["event"] == "finish" and record["tool"] == tool:
                return dict(record)
        await anyio.sleep(0.05)


async def call_then_hang_up(url: str, sid: str | None, tool: str, upstream: HangingOllama) -> None:
    """Send the call, wait until the upstream holds it, then close the connection (the client goes away)."""
    async with httpx2.AsyncClient(timeout=30) as http, anyio.create_task_group() as tg:
        tg.start_soon(post, http, url, tool_call(tool, CALLS[tool]), None, sid)
        assert await anyio.to_thread.run_sync(upstream.entered.wait, 20)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(("tool", "mode"), [("chat", "session"), ("embed", "session"), ("chat", "stateless")])
async def test_a_client_that_hangs_up_cancels_its_call_and_the_audit_says_cancelled(
    tmp_path: Path, tool: str, mode: str
) -> None:
    home = tmp_path / "home"
    extra = ("--stateless",) if mode == "stateless" else ()
    with HangingOllama(hold_s=60) as upstream:
        manifests = ollama_manifests(tmp_path / "manifests", upstream.url)
        with http_gateway(home, manifests, "streamable-http", *extra) as base, anyio.fail_after(40):
            url = base + "/mcp"
            sid = None
            if mode == "session":
                async with httpx2.AsyncClient(timeout=10) as http:
                    sid = await open_session(http, url)
            await call_then_hang_up(url, sid, tool, upstream)
            released = await anyio.to_thread.run_sync(upstream.released.wait, 15)
            finish = await finish_record(home, tool)
            async with httpx2.AsyncClient(timeout=10) as http:
                health = (await http.get(base + "/health")).json()
    assert released, "the upstream request was not closed when the client left"
    assert finish["outcome"] == "cancelled", finish
    assert health["in_flight"] == 0


async def test_sigterm_over_http_lets_the_call_in_flight_finish_then_exits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with HangingOllama(hold_s=1.5) as upstream:  # answers after 1.5 s (nobody hangs up)
        manifests = ollama_manifests(tmp_path / "manifests", upstream.url)
        port = free_port()
        argv = gateway_argv("--transport", "streamable-http", "--port", str(port), "--manifests", str(manifests))
        proc = await anyio.to_thread.run_sync(
            lambda: subprocess.Popen(argv, env=gateway_env(home), cwd=ROOT, stderr=subprocess.DEVNULL)
        )
        answers: list[httpx2.Response] = []
        try:
            base = f"http://127.0.0.1:{port}"
            await anyio.to_thread.run_sync(lambda: wait_http(base + "/health", proc=proc))
            with anyio.fail_after(40):
                async with httpx2.AsyncClient(timeout=30) as http:
                    sid = await open_session(http, base + "/mcp")

                    async def call() -> None:
                        answers.append(await post(http, base + "/mcp", tool_call("chat", CALLS["chat"]), sid=sid))

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call)
                        assert await anyio.to_thread.run_sync(upstream.entered.wait, 20)
                        proc.send_signal(signal.SIGTERM)
                rc = await anyio.to_thread.run_sync(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert answers[0].status_code == 200 and not answers[0].json()["result"]["isError"]
    assert rc in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it drained for once it is done
    finish = [r for r in map(json.loads, audit_path(home).read_text().splitlines()) if r["event"] == "finish"]
    assert [r["outcome"] for r in finish] == ["ok"]


async def test_a_legacy_sse_client_that_closes_its_stream_cancels_its_calls(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with HangingOllama(hold_s=60) as upstream:
        manifests = ollama_manifests(tmp_path / "manifests", upstream.url)
        with http_gateway(home, manifests, "sse") as base, anyio.fail_after(40):
            timeout = httpx2.Timeout(10, read=None)
            async with httpx2.AsyncClient(timeout=timeout) as http, sse_session(http, base) as session:
                await post(http, session.endpoint, initialize_message(1))
                await session.wait_for(1)
                await post(http, session.endpoint, INITIALIZED)
                await post(http, session.endpoint, tool_call("chat", CALLS["chat"], 2))
                assert await anyio.to_thread.run_sync(upstream.entered.wait, 20)
            released = await anyio.to_thread.run_sync(upstream.released.wait, 15)
            finish = await finish_record(home, "chat")
    assert released, "the upstream request was not closed when the client left"
    assert finish["outcome"] == "cancelled", finish
