"""A client's session: its privacy switch holds for it alone (the operator's for all), and the HTTP table's rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from server.app import Gateway
from server.session import SessionLimits, SessionState, SessionTable
from tests.support.fakes import FakeAdapter
from tests.support.gateway import serving_http, settings_for
from tests.support.processes import free_port

pytestmark = pytest.mark.anyio
ROUTES = {"routes": {"embed": ["cloud/m", "local/m"]}}
ALLOW_REMOTE = {"default_remote": "allow"}


def gateway(
    tmp_path: Path, policy: dict[str, Any] | None = None, **load: Any
) -> tuple[Gateway, dict[str, FakeAdapter]]:
    fakes = {"cloud": FakeAdapter("cloud", privacy="remote"), "local": FakeAdapter("local")}
    load = {"transport": "streamable-http", "port": free_port(), **load}
    settings = settings_for(tmp_path, routes=ROUTES, policy=policy or ALLOW_REMOTE, load=load)
    return Gateway(settings, fakes), fakes


async def served_by(client: Client) -> str:
    result = await client.call_tool("embed", {"input": "x"})
    assert not result.is_error, result.content
    return str(result.structured_content["adapter"])


async def test_privacy_switched_by_one_http_session_leaves_the_other_sessions_alone(tmp_path: Path) -> None:
    gw, _ = gateway(tmp_path)
    with anyio.fail_after(30):
        async with serving_http(gw) as base:
            async with Client(base + "/mcp", mode="legacy") as a, Client(base + "/mcp", mode="legacy") as b:
                switched = await a.call_tool("privacy", {"enable": True})
                routes = [await served_by(a), await served_by(b), await served_by(a)]
                views = [(await c.call_tool("privacy", {})).structured_content["privacy_mode"] for c in (a, b)]
                listed = [(await c.call_tool("models", {})).structured_content for c in (a, b)]
                health = json.loads((await b.read_resource("gateway://health")).contents[0].text)
            audit = [json.loads(line) for line in gw.get().audit.path.read_text().splitlines()]
    assert switched.structured_content["changed"] is True and switched.structured_content["operator"] is False
    assert routes == ["local", "cloud", "local"] and views == [True, False]
    assert [{m["name"]: m["routable"] for m in x["models"]}["cloud/m"] for x in listed] == [False, True]
    assert health["privacy_mode"] is False  # the gateway as a whole is not in privacy mode
    assert [r["model"] for r in audit if r["event"] == "privacy"] == ["on"]


async def test_the_operators_privacy_mode_holds_for_every_session_and_no_client_lifts_it(tmp_path: Path) -> None:
    lift = {"rules": [{"id": "ops-may", "effect": "allow", "match": {"tool": ["privacy"]}}], **ALLOW_REMOTE}
    gw, fakes = gateway(tmp_path, lift, privacy_mode=True)
    with anyio.fail_after(30):
        async with serving_http(gw) as base, Client(base + "/mcp", mode="legacy") as client:
            lifted = await client.call_tool("privacy", {"enable": False})
            read = (await client.call_tool("privacy", {})).structured_content
            served = await served_by(client)
            audit = [json.loads(line) for line in gw.get().audit.path.read_text().splitlines()]
    assert lifted.is_error and "operator" in lifted.content[0].text
    assert read["privacy_mode"] is True and read["operator"] is True and served == "local"
    assert fakes["cloud"].probes == 0  # remote adapters are not even probed under the operator's mode
    assert audit[0]["event"] == "deny" and audit[0]["rule"] == "operator"


async def test_without_a_session_a_privacy_switch_is_refused_and_says_why(tmp_path: Path) -> None:
    gw, _ = gateway(tmp_path, stateless=True)
    with anyio.fail_after(30):
        async with serving_http(gw) as base, Client(base + "/mcp", mode="legacy") as client:
            refused = await client.call_tool("privacy", {"enable": True})
            served = await served_by(client)
    assert refused.is_error and "no session" in refused.content[0].text and served == "cloud"


async def test_over_stdio_the_one_session_switches_privacy_for_its_next_calls(tmp_path: Path) -> None:
    gw, _ = gateway(tmp_path, transport="stdio")
    async with Client(gw.server) as client:  # each request of the modern protocol is its own connection
        before = await served_by(client)
        await client.call_tool("privacy", {"enable": True})
        after = await served_by(client)
        resource = json.loads((await client.read_resource("gateway://privacy")).contents[0].text)
    assert (before, after) == ("cloud", "local") and resource["privacy_mode"] is True


# --- the HTTP session table: ownership, room, idleness -------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(per_principal: int = 3, total: int = 100, idle_s: float = 60.0) -> tuple[SessionTable, Clock]:
    clock = Clock()
    return SessionTable(SessionLimits(per_principal, total, idle_s), clock), clock


def open_one(t: SessionTable, clock: Clock, sid: str, principal: str = "alice") -> SessionState:
    victims = t.reserve(principal)
    assert victims == []
    handle = t.add(SessionState(principal, "streamable-http", sid, host=b"127.0.0.1:1"))
    t.release(principal)
    clock.now += 1
    return handle


def test_a_session_is_found_only_by_the_principal_that_opened_it() -> None:
    t, clock = table()
    handle = open_one(t, clock, "s1", "alice")
    assert t.owned("s1", "alice") is handle
    assert t.owned("s1", "bob") is None
    assert t.owned("nope", "alice") is None
    assert t.refused_foreign == 1


def test_at_the_cap_the_oldest_idle_session_of_that_principal_is_named_and_leaves_the_table() -> None:
    t, clock = table(per_principal=3)
    first, second, _ = (open_one(t, clock, f"s{i}") for i in range(3))
    t.begin(first)
    t.end(first)  # used again: now the most recent
    victims = t.reserve("alice")
    assert victims == [second]
    assert second.closed and t.get("s1") is None and t.count("alice") == 2


def test_a_session_with_a_request_in_flight_is_never_evicted_and_only_its_principal_is_refused() -> None:
    t, clock = table(per_principal=2)
    busy = [open_one(t, clock, f"a{i}") for i in range(2)]
    for handle in busy:
        t.begin(handle)
    assert t.reserve("alice") is None
    assert all(not h.closed for h in busy)
    assert t.reserve("bob") == []  # another principal still gets in


def test_a_session_that_only_listens_goes_after_every_session_that_does_nothing() -> None:
    t, clock = table(per_principal=3)
    listening, quiet, newer = (open_one(t, clock, f"s{i}") for i in range(3))
    t.begin(listening, stream=True)
    assert t.reserve("alice") == [quiet]
    t.release("alice")
    t.add(SessionState("alice", "streamable-http", "s3"))
    t.begin(t.get("s3") or newer)
    assert t.reserve("alice") == [newer]


def test_openings_in_progress_count_toward_the_cap() -> None:
    t, _ = table(per_principal=2)
    assert t.reserve("alice") == []
    assert t.reserve("alice") == []
    assert t.reserve("alice") is None  # two on their way, none established: nothing to evict
    t.release("alice")
    assert t.reserve("alice") == []


def test_at_the_total_cap_the_oldest_idle_session_of_anyone_makes_room() -> None:
    t, clock = table(per_principal=10, total=3)
    oldest = open_one(t, clock, "b1", "bob")
    open_one(t, clock, "a1", "alice")
    open_one(t, clock, "c1", "carol")
    assert t.reserve("dave") == [oldest]
    assert len(t) == 2


def test_a_refused_opening_at_the_total_cap_puts_back_what_it_took() -> None:
    t, clock = table(per_principal=2, total=2)
    mine = [open_one(t, clock, f"a{i}") for i in range(2)]
    t.begin(mine[0])
    t.begin(mine[1], stream=True)
    t.end(mine[1], stream=True)
    t.begin(mine[1])
    assert t.reserve("alice") is None
    assert [t.get("a0"), t.get("a1")] == mine and not any(h.closed for h in mine)


def test_sessions_idle_past_the_timeout_expire_and_busy_or_listening_ones_do_not() -> None:
    t, clock = table(idle_s=60)
    idle, busy, listening = (open_one(t, clock, f"s{i}") for i in range(3))
    t.begin(busy)
    t.begin(listening, stream=True)
    clock.now += 55  # s0 has been idle 58 s
    assert t.expired() == []
    clock.now += 5
    assert t.expired() == [idle]
    assert idle.closed and t.get("s0") is None and len(t) == 2


def test_a_removed_session_is_closed_and_its_id_is_then_unknown() -> None:
    t, clock = table()
    handle = open_one(t, clock, "s1")
    assert t.remove("s1") is handle and handle.closed
    assert t.owned("s1", "alice") is None and t.remove("s1") is None
    assert t.count("alice") == 0


def test_an_opening_that_reserved_no_room_is_trimmed_back_to_the_cap_afterwards() -> None:
    t, clock = table(per_principal=2)
    first, second = (open_one(t, clock, f"s{i}") for i in range(2))
    newcomer = t.add(SessionState("alice", "streamable-http", "s2"))
    t.begin(newcomer)  # still answering the request that opened it
    assert t.trim("alice") == [first]
    assert t.count("alice") == 2 and not second.closed and not newcomer.closed
