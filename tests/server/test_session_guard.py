"""The session guard over a stand-in transport that opens, serves and ends sessions as the MCP SDK's does."""

from __future__ import annotations

import itertools
import json
from typing import Any

import anyio
import pytest

from server import envelope
from server.http_guard import REQUEST_KEY, RequestState
from server.jsonparse import parse
from server.principal import SCOPE_KEY
from server.session import SESSION_KEY, SessionLimits, SessionState, SessionTable
from server.session_guard import SessionGuard, sse_session_id

pytestmark = pytest.mark.anyio
Message = dict[str, Any]


class Transport:
    """Answers like the Streamable HTTP transport: an initialize opens a session, DELETE ends it."""

    def __init__(self) -> None:
        self.ids = (f"{n:032x}" for n in itertools.count(1))
        self.open: set[str] = set()
        self.seen: list[tuple[str, str | None, bytes]] = []  # method, session id, Host
        self.deleted = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        hdrs = dict(scope["headers"])
        sid = hdrs.get(b"mcp-session-id", b"").decode() or None
        self.seen.append((scope["method"], sid, hdrs.get(b"host", b"")))
        extra: list[tuple[bytes, bytes]] = []
        if sid is None:
            body = scope[REQUEST_KEY].body if REQUEST_KEY in scope else b""
            status = 200 if b"initialize" in body else 400
            if status == 200:
                new = next(self.ids)
                self.open.add(new)
                extra = [(b"mcp-session-id", new.encode())]
        elif sid not in self.open:
            status = 404
        elif scope["method"] == "DELETE":
            self.open.discard(sid)
            self.deleted.set()
            status = 200
        else:
            status = 200
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b"{}"})


def request(method: str, principal: str | None, sid: str | None = None, body: bytes = b"") -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8765")] + ([(b"mcp-session-id", sid.encode())] if sid else [])
    scope: dict[str, Any] = {"type": "http", "method": method, "path": "/mcp", "headers": headers}
    scope[REQUEST_KEY] = state = RequestState(body)
    if body:  # as the request guard leaves it: parsed once, classified
        message = envelope.classify(parse(body))
        state.message = message if isinstance(message, envelope.Request | envelope.Notification) else None
    if principal is not None:
        scope[SCOPE_KEY] = principal
    return scope


async def call(guard: SessionGuard, scope: dict[str, Any]) -> tuple[int, dict[str, str]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": scope[REQUEST_KEY].body}

    async def send(message: Message) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start.get("headers", [])}


INIT = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}).encode()


def guard_over(transport: Transport, per_principal: int = 2, idle_s: float = 600) -> SessionGuard:
    return SessionGuard(transport, SessionTable(SessionLimits(per_principal, 100, idle_s)))


async def test_requests_in_a_session_carry_it_and_other_principals_never_reach_the_transport() -> None:
    transport = Transport()
    guard = guard_over(transport)
    _, answer = await call(guard, request("POST", "alice", body=INIT))
    sid = answer["mcp-session-id"]
    scope = request("POST", "alice", sid, b"{}")
    assert (await call(guard, scope))[0] == 200
    session = scope[SESSION_KEY]
    assert isinstance(session, SessionState) and session.sid == sid and session.principal == "alice"
    assert session.transport == "streamable-http" and guard.table.get(sid) is session
    before = len(transport.seen)
    assert (await call(guard, request("DELETE", "bob", sid)))[0] == 404
    assert (await call(guard, request("GET", None, sid)))[0] == 404  # no token is no one's principal either
    assert len(transport.seen) == before and sid in transport.open


async def test_an_evicted_session_is_ended_in_the_transport_with_a_delete_of_its_own() -> None:
    transport = Transport()
    guard = guard_over(transport, per_principal=2)
    sids = [(await call(guard, request("POST", "alice", body=INIT)))[1]["mcp-session-id"] for _ in range(3)]
    assert transport.open == set(sids[1:])
    assert ("DELETE", sids[0], b"127.0.0.1:8765") in transport.seen
    assert (await call(guard, request("POST", "alice", sids[0], b"{}")))[0] == 404


async def test_a_session_ended_by_its_client_leaves_the_table() -> None:
    transport = Transport()
    guard = guard_over(transport)
    sid = (await call(guard, request("POST", "alice", body=INIT)))[1]["mcp-session-id"]
    assert (await call(guard, request("DELETE", "alice", sid)))[0] == 200
    assert guard.table.get(sid) is None


async def test_only_a_parsed_initialize_reserves_room_for_a_session() -> None:
    transport = Transport()
    guard = guard_over(transport, per_principal=1)
    sid = (await call(guard, request("POST", "alice", body=INIT)))[1]["mcp-session-id"]
    tricky = b'{"jsonrpc":"2.0","id":2,"method":"ping","params":{"note":"initialize"}}'
    assert (await call(guard, request("POST", "alice", body=tricky)))[0] == 200  # the stand-in opens one anyway
    assert guard.table.get(sid) is None and len(guard.table) == 1  # trimmed back to the cap afterwards


async def test_sessions_idle_past_the_timeout_are_deleted_while_the_sweeper_runs() -> None:
    transport = Transport()
    guard = guard_over(transport, idle_s=0.05)
    sid = (await call(guard, request("POST", "alice", body=INIT)))[1]["mcp-session-id"]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(guard.sweep)
            await transport.deleted.wait()
            tg.cancel_scope.cancel()
    assert sid not in transport.open and guard.table.get(sid) is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"session_id=0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
        (b"session_id=0123456789ABCDEF0123456789ABCDEF", "0123456789abcdef0123456789abcdef"),
        (b"session_id=01234567-89ab-cdef-0123-456789abcdef", "0123456789abcdef0123456789abcdef"),
        (b"session_id=%7B01234567-89ab-cdef-0123-456789abcdef%7D", "0123456789abcdef0123456789abcdef"),
        (b"session_id=urn:uuid:01234567-89ab-cdef-0123-456789abcdef", "0123456789abcdef0123456789abcdef"),
        (b"session_id=not-a-session", ""),
        (b"other=1", None),
    ],
)
def test_an_sse_session_id_is_compared_in_one_spelling(query: bytes, expected: str | None) -> None:
    assert sse_session_id({"query_string": query}) == expected
