"""Log notifications through real clients: stdio (one session) and Streamable HTTP (one level per session)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp_types import LoggingMessageNotificationParams

from tests.support.processes import http_gateway, stdio_params

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


class Inbox:
    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []
        self.other: list[LoggingMessageNotificationParams] = []
        self._changed = anyio.Event()

    async def __call__(self, params: LoggingMessageNotificationParams) -> None:
        if isinstance(params.data, dict) and params.data.get("message") == "call":
            self.calls.append(params.data)
        else:
            self.other.append(params)
        self._changed.set()

    async def wait_calls(self, n: int) -> list[dict[str, object]]:
        with anyio.fail_after(10):
            while len(self.calls) < n:
                self._changed = anyio.Event()
                await self._changed.wait()
        return self.calls


async def test_over_stdio_set_level_brings_the_call_lines_to_the_client(tmp_path: Path, manifests: Path) -> None:
    inbox = Inbox()
    params = stdio_params(tmp_path, manifests, env={"MODEL_GATEWAY_LOG_LEVEL": "WARNING"})
    with anyio.fail_after(60):
        async with Client(params, mode="legacy", logging_callback=inbox) as c:
            await c.call_tool("embed", {"input": ["before"]})
            await c.set_logging_level("debug")
            await c.call_tool("embed", {"input": ["after"]})
            calls = await inbox.wait_calls(1)
    assert len(calls) == 1 and calls[0]["tool"] == "embed" and calls[0]["outcome"] == "ok"


async def test_over_http_each_session_gets_its_own_calls_at_its_own_level(tmp_path: Path, manifests: Path) -> None:
    talkative, other, quiet = Inbox(), Inbox(), Inbox()
    with http_gateway(tmp_path, manifests, "streamable-http") as base, anyio.fail_after(60):
        url = base + "/mcp"
        async with (
            Client(url, mode="legacy", logging_callback=talkative) as a,
            Client(url, mode="legacy", logging_callback=other) as b,
            Client(url, mode="legacy", logging_callback=quiet) as c,
        ):
            await a.set_logging_level("debug")
            await b.set_logging_level("debug")
            await a.call_tool("embed", {"input": ["from a"]})
            await a.call_tool("rerank", {"query": "q", "documents": ["d"]})
            await b.call_tool("chat", {"messages": [{"role": "user", "content": "from b"}], "max_tokens": 2})
            await c.call_tool("embed", {"input": ["from c"]})
            a_calls = await talkative.wait_calls(2)
            b_calls = await other.wait_calls(1)
            await a.call_tool("embed", {"input": ["fence"]})  # messages are sent in order: a fence for the others
            await talkative.wait_calls(3)
    assert [x["tool"] for x in a_calls[:2]] == ["embed", "rerank"]
    assert [x["tool"] for x in b_calls] == ["chat"]
    assert quiet.calls == [] and quiet.other == []
    assert not {x["call_id"] for x in a_calls} & {x["call_id"] for x in b_calls}
