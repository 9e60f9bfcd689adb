from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import LoggingMessageNotificationParams

from server.client_logs import BURST, MAX_CHARS, ClientLogs
from server.redact import Redactor
from server.session import SessionState
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

PROCESS = logging.getLogger("model_gateway.discovery")  # what logs process-wide events


class Inbox:
    def __init__(self) -> None:
        self.messages: list[LoggingMessageNotificationParams] = []
        self._changed = anyio.Event()

    async def __call__(self, params: LoggingMessageNotificationParams) -> None:
        self.messages.append(params)
        self._changed.set()

    async def wait_for(self, text: str, timeout_s: float = 5.0) -> LoggingMessageNotificationParams:
        with anyio.fail_after(timeout_s):
            while True:
                found = [m for m in self.messages if text in str(m.data)]
                if found:
                    return found[0]
                self._changed = anyio.Event()
                await self._changed.wait()

    def texts(self) -> list[str]:
        return [str(m.data.get("message")) if isinstance(m.data, dict) else str(m.data) for m in self.messages]


@asynccontextmanager
async def client(tmp_path: Path, inbox: Inbox) -> AsyncIterator[Client]:
    server, _ = fake_server(tmp_path, {"a": FakeAdapter("a")})
    async with Client(server, mode="legacy", logging_callback=inbox) as c:  # setLevel is a handshake-era method
        await c.list_tools()  # a round trip: the server has taken the client's `initialized` by now
        yield c


async def test_a_session_receives_warnings_by_default_and_nothing_below(tmp_path: Path) -> None:
    inbox = Inbox()
    async with client(tmp_path, inbox):
        PROCESS.info("probe of adapter x took 3 ms")
        PROCESS.warning("adapter x is down: connection refused")
        got = await inbox.wait_for("adapter x is down")
    assert got.level == "warning" and got.logger == "model_gateway.discovery"
    assert inbox.texts() == ["adapter x is down: connection refused"]


async def test_set_level_debug_brings_the_line_each_call_logs_to_that_session(tmp_path: Path) -> None:
    inbox = Inbox()
    async with client(tmp_path, inbox) as c:
        await c.set_logging_level("debug")
        await c.call_tool("embed", {"input": ["x"]})
        line = await inbox.wait_for("'tool': 'embed'")
    assert line.level == "debug"
    assert isinstance(line.data, dict) and line.data["outcome"] == "ok" and line.data["adapter"] == "a"


async def test_a_session_level_never_changes_what_the_operator_sees_on_stderr(tmp_path: Path) -> None:
    seen: list[logging.LogRecord] = []
    stderr_like = logging.Handler()
    stderr_like.emit = seen.append  # type: ignore[method-assign]
    root = logging.getLogger()
    before = root.level
    root.addHandler(stderr_like)
    root.setLevel(logging.WARNING)
    try:
        inbox = Inbox()
        async with client(tmp_path, inbox) as c:
            await c.set_logging_level("debug")
            await c.call_tool("embed", {"input": ["x"]})
            await inbox.wait_for("'tool': 'embed'")
            assert root.level == logging.DEBUG  # lowered for the session ...
        assert root.level == logging.WARNING  # ... and given back when the server stops
    finally:
        root.removeHandler(stderr_like)
        root.setLevel(before)
    assert [r for r in seen if r.levelno < logging.WARNING] == []  # ... but stderr kept the operator's level


async def test_messages_are_redacted_before_they_are_cut_to_size(tmp_path: Path) -> None:
    inbox = Inbox()
    async with client(tmp_path, inbox):
        key = "sk-" + "A1b2C3d4" * 4
        PROCESS.warning("upstream said: %s", "x" * (MAX_CHARS - 20) + " key " + key + " tail")
        got = await inbox.wait_for("upstream said")
    text = got.data["message"] if isinstance(got.data, dict) else ""
    assert len(text) <= MAX_CHARS
    assert "A1b2C3d4" not in text and "sk-A1b" not in text


async def test_a_flood_of_warnings_reaches_the_client_as_a_trickle_and_a_count(tmp_path: Path) -> None:
    inbox = Inbox()
    async with client(tmp_path, inbox):
        for i in range(500):
            PROCESS.warning("flood %d", i)
        summary = await inbox.wait_for("held back", timeout_s=10)
    flood = [t for t in inbox.texts() if t.startswith("flood")]
    assert BURST <= len(flood) <= BURST + 5  # the bucket refills at 10/s while the loop runs
    assert summary.level == "warning" and str(500 - len(flood)) in str(summary.data)


async def test_library_records_are_not_forwarded(tmp_path: Path) -> None:
    inbox = Inbox()
    async with client(tmp_path, inbox):
        logging.getLogger("mcp.server.streamable_http").warning("Terminating session: 0123")
        logging.getLogger("httpx2").warning("HTTP Request: POST http://upstream/api")
        PROCESS.warning("marker")
        await inbox.wait_for("marker")
    assert inbox.texts() == ["marker"]


async def test_a_session_at_error_receives_errors_only(tmp_path: Path) -> None:
    inbox = Inbox()
    async with client(tmp_path, inbox) as c:
        await c.set_logging_level("error")
        PROCESS.warning("below error")
        PROCESS.error("at error")
        await inbox.wait_for("at error")
    assert inbox.texts() == ["at error"]


def warning(text: str) -> logging.LogRecord:
    return PROCESS.makeRecord(PROCESS.name, logging.WARNING, __file__, 1, text, None, None)


class Channel:
    """Stands in for an SDK connection: records what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.changed = anyio.Event()

    async def notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        assert method == "notifications/message" and params is not None
        self.sent.append(str(params["data"]["message"]))
        self.changed.set()
        self.changed = anyio.Event()


async def test_what_a_call_logs_goes_to_its_own_session_and_a_call_without_one_reaches_nobody() -> None:
    logs = ClientLogs(Redactor([]))
    mine, theirs = SessionState("alice", "sse", "a"), SessionState("bob", "sse", "b")
    to_mine, to_theirs = Channel(), Channel()
    logs.attach(mine, to_mine)
    logs.attach(theirs, to_theirs)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(logs.run)
            with logs.scoped(mine):
                logs.offer(warning("alice's call"))
            with logs.scoped(None):
                logs.offer(warning("a call without a session"))
            logs.offer(warning("for everyone"))
            while len(to_theirs.sent) < 1 or len(to_mine.sent) < 2:
                await (to_mine.changed if len(to_mine.sent) < 2 else to_theirs.changed).wait()
            tg.cancel_scope.cancel()
    assert to_mine.sent == ["alice's call", "for everyone"] and to_theirs.sent == ["for everyone"]


async def test_a_session_that_ended_is_let_go_of_and_its_level_no_longer_counts() -> None:
    logs = ClientLogs(Redactor([]))
    talkative, quiet = SessionState("a", "sse", "1"), SessionState("b", "sse", "2")
    to_talkative, to_quiet = Channel(), Channel()
    logs.set_level(talkative, to_talkative, "debug")
    logs.attach(quiet, to_quiet)
    assert logs.handler.level == logging.DEBUG and len(logs) == 2
    talkative.closed = True  # the session guard ended it
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(logs.run)
            delivered = to_quiet.changed
            logs.offer(warning("after the end"))
            await delivered.wait()  # one delivery round: ended sessions are let go of first
            tg.cancel_scope.cancel()
    assert len(logs) == 1 and to_talkative.sent == [] and to_quiet.sent == ["after the end"]
    assert logs.handler.level == logging.WARNING and talkative.log_level == logging.DEBUG
