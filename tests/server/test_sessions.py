from __future__ import annotations

from server.sessions import SessionHandle, SessionLimits, SessionTable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(per_principal: int = 3, total: int = 100, idle_s: float = 60.0) -> tuple[SessionTable, Clock]:
    clock = Clock()
    return SessionTable(SessionLimits(per_principal, total, idle_s), clock), clock


def open_one(t: SessionTable, clock: Clock, sid: str, principal: str = "alice") -> SessionHandle:
    victims = t.reserve(principal)
    assert victims == []
    handle = t.add(sid, principal, "streamable-http", b"127.0.0.1:1")
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
    t.add("s3", "alice", "streamable-http", b"h")
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


def test_removing_a_session_closes_its_handle_and_its_id_is_then_unknown() -> None:
    t, clock = table()
    handle = open_one(t, clock, "s1")
    assert t.remove("s1") is handle and handle.closed
    assert t.owned("s1", "alice") is None and t.remove("s1") is None
    assert t.count("alice") == 0


def test_an_opening_that_reserved_no_room_is_trimmed_back_to_the_cap_afterwards() -> None:
    t, clock = table(per_principal=2)
    first, second = (open_one(t, clock, f"s{i}") for i in range(2))
    newcomer = t.add("s2", "alice", "streamable-http", b"h")
    t.begin(newcomer)  # still answering the request that opened it
    assert t.trim("alice") == [first]
    assert t.count("alice") == 2 and not second.closed and not newcomer.closed
