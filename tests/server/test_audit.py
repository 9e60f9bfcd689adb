"""The audit sink: records, durability modes, rotation, restarts, fail-closed, content capture."""

from __future__ import annotations

import json
import multiprocessing
import os
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from server.audit import AuditLog, AuditOptions, checkpoints_path, segment_files
from server.audit_chain import lock_path
from server.audit_verify import verify
from server.errors import AuditUnavailableError
from server.statefile import open_lock, try_lock, unlock
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server

pytestmark = pytest.mark.anyio
KEY = b"k" * 32
ROUTES = {"routes": {"embed": ["a/m"], "chat": ["a"], "rerank": ["a"]}}


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for _, p in segment_files(path) if p.exists() for x in p.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["always", "group", "never"])
async def test_every_fsync_mode_writes_a_chain_that_verifies(tmp_path: Path, mode: str) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", KEY, AuditOptions(fsync=mode, group_commit_ms=1.0))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(log.write, {"event": "start", "call_id": str(i)})
    await log.aclose()
    assert [r["seq"] for r in records(log.path)] == list(range(1, 51))
    report = verify(log.path, KEY)
    assert report.ok and report.records == 50 and report.checkpoints >= 1


async def test_group_commit_shares_one_fsync_among_concurrent_writers(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", KEY, AuditOptions(fsync="group", group_commit_ms=20.0))
    synced: list[int] = []
    original = log._fsync_fd

    async def counting(fd: int) -> None:
        synced.append(fd)
        await original(fd)

    log._fsync_fd = counting  # type: ignore[method-assign]
    log_fd = log._w.fd
    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(log.write, {"event": "start", "call_id": str(i)})
    log_syncs = [fd for fd in synced if fd == log_fd]
    await log.aclose()
    assert 1 <= len(log_syncs) < 40  # every writer waited for a group's fsync; far fewer fsyncs than records


async def test_a_lone_writer_on_a_fast_disk_syncs_inline_and_concurrent_writers_share_a_threaded_sync(
    tmp_path: Path,
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", KEY, AuditOptions(fsync="group"))
    await log.write({"event": "start", "call_id": "1"}, durable=False)
    await log.write({"event": "finish", "call_id": "1"}, alone=True)
    inline = log.inline_syncs  # the log, and the first checkpoint with it
    assert inline >= 1 and log._synced_gen == log._written_gen == 2
    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(partial(log.write, {"event": "finish", "call_id": str(i)}, alone=False))
    assert log.inline_syncs == inline and log._synced_gen == log._written_gen == 12
    log.sync_s = 0.05  # a slow disk: even a lone writer leaves the loop free while it syncs
    await log.write({"event": "finish", "call_id": "x"}, alone=True)
    assert log.inline_syncs == inline and log._synced_gen == 13
    await log.aclose()
    assert verify(log.path, KEY).ok


async def test_one_slow_sync_leaves_a_lone_writer_inline_and_a_disk_that_stays_slow_moves_it_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.audit as audit_module

    durations = iter([0.00005] * 8 + [0.05] + [0.00005] * 4 + [0.05] * 12)
    real = audit_module._timed_sync

    def timed(fd: int) -> float:
        real(fd)
        return next(durations, 0.05)  # what the disk is made to take: fast, one spike, then slow for good

    monkeypatch.setattr(audit_module, "_timed_sync", timed)
    log = AuditLog(tmp_path / "audit.jsonl", KEY, AuditOptions(fsync="group", checkpoint_every=10**6))
    modes = []
    for i in range(25):
        before = log.inline_syncs
        await log.write({"event": "finish", "call_id": str(i)}, alone=True)
        modes.append("inline" if log.inline_syncs > before else "thread")
    await log.aclose()
    assert modes[:14] == ["inline"] * 14  # the spike at the 9th sync changed nothing
    assert modes[-1] == "thread" and log.sync_s == 0.05  # half a window of slow syncs did
    assert verify(log.path, KEY).ok


async def test_a_failing_inline_sync_refuses_the_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.audit as audit_module

    log = AuditLog(tmp_path / "audit.jsonl", KEY, AuditOptions(fsync="group"))

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(audit_module, "_sync_data", broken)
    with pytest.raises(AuditUnavailableError, match="fsync failed"):
        await log.write({"event": "finish", "call_id": "1"}, alone=True)
    assert not log.healthy
    await log.aclose()


async def test_the_chain_continues_across_restarts_and_rotations(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for run in range(3):
        log = AuditLog(path, KEY, AuditOptions(fsync="never", max_file_bytes=4096))
        for i in range(30):
            await log.write({"event": "start", "call_id": f"{run}-{i}"})
        await log.aclose()
    rotations = len(segment_files(path)) - 1
    assert rotations > 2
    report = verify(path, KEY)
    assert report.ok, report.damage
    assert report.records == 90 + rotations  # each rotated file ends with its seal
    assert [r["event"] for r in records(path)].count("rotate") == rotations


async def test_a_torn_tail_left_by_a_crash_is_cut_and_recorded_at_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY, AuditOptions(fsync="never"))
    await log.write({"event": "start"})
    await log.aclose()
    with path.open("ab") as fh:
        fh.write(b'{"seq":2,"ev')
    log = AuditLog(path, KEY, AuditOptions(fsync="never"))
    await log.write({"event": "start"})
    await log.aclose()
    events = [r["event"] for r in records(path)]
    assert events == ["start", "recover", "start"]
    assert records(path)[1]["torn_bytes"] == len(b'{"seq":2,"ev')
    assert verify(path, KEY).ok


async def test_a_full_disk_refuses_calls_and_health_names_the_reason(tmp_path: Path) -> None:
    adapters = {"a": FakeAdapter("a")}
    server, _ = fake_server(tmp_path, adapters, routes=ROUTES)
    audit_dir = tmp_path / ".local" / "state" / "model-gateway" / "audit"
    audit_dir.mkdir(parents=True)
    os.symlink("/dev/full", audit_dir / "audit.jsonl")  # every write fails with ENOSPC, as on a full disk
    async with Client(server) as c:
        refused = await c.call_tool("embed", {"input": ["x"]})
        health = json.loads((await c.read_resource("gateway://health")).contents[0].text)
    assert refused.is_error and "audit log not writable: No space left on device" in refused.content[0].text
    assert adapters["a"].calls == []  # nothing is served unaudited
    assert health["audit"]["ok"] is False and "No space left" in health["audit"]["error"]
    assert health["status"] == "degraded"


async def test_an_audit_sink_that_cannot_open_refuses_calls_instead_of_crashing(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").mkdir()  # a directory where the log should be: open() fails even for root
    log = AuditLog(tmp_path / "audit.jsonl", KEY, AuditOptions(fsync="group"))
    assert not log.healthy and "cannot be opened" in (log.error or "")
    with pytest.raises(AuditUnavailableError, match="call refused"):
        await log.write({"event": "start"})


async def test_a_sink_that_can_write_again_serves_again(tmp_path: Path) -> None:
    now = [0.0]
    (tmp_path / "audit.jsonl").mkdir()
    log = AuditLog(tmp_path / "audit.jsonl", KEY, AuditOptions(fsync="never", clock=lambda: now[0]))
    with pytest.raises(AuditUnavailableError):
        await log.write({"event": "start"})
    (tmp_path / "audit.jsonl").rmdir()
    with pytest.raises(AuditUnavailableError):
        await log.write({"event": "start"})  # not retried before the back-off has passed
    now[0] = 60.0
    await log.write({"event": "start"})
    await log.aclose()
    assert log.healthy and verify(tmp_path / "audit.jsonl", KEY).ok


async def test_records_hold_hashes_unless_the_manifest_opts_in_to_content(tmp_path: Path) -> None:
    for capture in (False, True):
        root = tmp_path / str(capture)
        perf = {"audit": {"capture_content": capture}}
        server, ref = fake_server(root, {"a": FakeAdapter("a")}, routes=ROUTES, performance=perf)
        async with Client(server) as c:
            await c.call_tool("embed", {"input": ["plain words here"]})
            path = ref.get().audit.path
        text = path.read_text()
        assert ("plain words here" in text) is capture
        start = records(path)[0]
        assert start["request_sha256"] and start["candidates"] == ["a/m"]


async def test_finish_records_carry_adapter_model_outcome_latency_and_evidence(tmp_path: Path) -> None:
    server, ref = fake_server(tmp_path, {"a": FakeAdapter("a")}, routes=ROUTES)
    async with Client(server) as c:
        await c.call_tool("chat", {"messages": [{"role": "user", "content": "hi there"}]})
        path = ref.get().audit.path
    start, finish = records(path)
    assert start["event"] == "start" and start["rule"] == "default" and start["decision"] == "allow"
    assert finish["adapter"] == "a" and finish["model"] == "m" and finish["outcome"] == "ok"
    assert isinstance(finish["latency_ms"], float) and len(str(finish["response_sha256"])) == 64
    assert finish["principal"] == start["principal"] and checkpoints_path(path).exists()


async def test_two_sinks_on_one_trail_extend_one_chain_across_each_others_rotations(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    a = AuditLog(path, KEY, AuditOptions(fsync="never", max_file_bytes=4096, checkpoint_every=5))
    b = AuditLog(path, KEY, AuditOptions(fsync="never", max_file_bytes=4096, checkpoint_every=5))
    for i in range(60):
        await (a if i % 3 else b).write({"event": "start", "call_id": f"c{i}"})
    await a.aclose()
    await b.aclose()
    recs = records(path)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert [r["call_id"] for r in recs if r["event"] == "start"] == [f"c{i}" for i in range(60)]
    report = verify(path, KEY)
    assert report.ok, report.damage
    assert report.segments > 3 and report.checkpoints >= 60 // 5


def _worker(path: str, worker: int, n: int, barrier: Any) -> None:
    async def run() -> None:
        log = AuditLog(Path(path), KEY, AuditOptions(fsync="group", max_file_bytes=8192, checkpoint_every=9))
        barrier.wait()
        for i in range(n):
            await log.write({"event": "start", "call_id": f"w{worker}-{i}"}, durable=False)
            await log.write({"event": "finish", "call_id": f"w{worker}-{i}"}, alone=True)
        await log.aclose()

    anyio.run(run)


def test_writers_in_separate_processes_append_one_chain_that_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_worker, args=(str(path), w, 60, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    recs = records(path)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert len([r for r in recs if r["event"] != "rotate"]) == 4 * 60 * 2
    ids = [r["call_id"] for r in recs if r["event"] == "finish"]
    assert sorted(ids) == sorted(f"w{w}-{i}" for w in range(4) for i in range(60))
    report = verify(path, KEY)
    assert report.ok, report.damage
    assert report.segments > 3


async def test_a_torn_tail_left_by_another_writer_is_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    a = AuditLog(path, KEY, AuditOptions(fsync="never"))
    b = AuditLog(path, KEY, AuditOptions(fsync="never"))
    await a.write({"event": "start", "call_id": "1"})
    with path.open("ab") as fh:
        fh.write(b'{"seq":2,"event":"fin')  # a writer killed mid-record
    await b.write({"event": "start", "call_id": "2"})
    await a.write({"event": "start", "call_id": "3"})
    await a.aclose()
    await b.aclose()
    assert [(r["event"], r.get("call_id")) for r in records(path)] == [
        ("start", "1"),
        ("recover", None),
        ("start", "2"),
        ("start", "3"),
    ]
    assert verify(path, KEY).ok


async def test_a_damaged_last_line_stays_and_the_chain_restarts_after_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY, AuditOptions(fsync="never"))
    for i in range(5):
        await log.write({"event": "start", "call_id": str(i)})
    await log.aclose()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(b'"call_id":"4"', b'"call_id":"X"')  # an edit nobody can re-sign
    path.write_bytes(b"".join(lines))
    damaged = lines[-1]
    log = AuditLog(path, KEY, AuditOptions(fsync="never"))
    await log.write({"event": "start", "call_id": "after"})
    await log.aclose()
    after = path.read_bytes().splitlines(keepends=True)
    assert after[4] == damaged  # never rewritten
    restart = json.loads(after[5])
    assert restart["event"] == "restart" and restart["prev"] == "0" * 64 and restart["after_seq"] == 4
    report = verify(path, KEY)
    assert [d.kind for d in report.damages] == ["edited"] and report.damage is not None
    assert report.damage.seq == 5 and report.resumes_at == restart["seq"]


async def test_a_log_cut_behind_its_checkpoints_restarts_after_the_checkpointed_seq(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY, AuditOptions(fsync="never", checkpoint_every=4))
    for i in range(12):
        await log.write({"event": "start", "call_id": str(i)})
    await log.aclose()
    signed = max(json.loads(x)["seq"] for x in checkpoints_path(path).read_text().splitlines())
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:6]))  # a restored backup, or a cut after a crash
    log = AuditLog(path, KEY, AuditOptions(fsync="never"))
    await log.write({"event": "start", "call_id": "new"})
    await log.aclose()
    restart = records(path)[6]
    assert restart["event"] == "restart" and restart["seq"] == signed + 1 and restart["after_seq"] == 6
    report = verify(path, KEY)
    assert not report.ok and {d.kind for d in report.damages} <= {"deleted", "truncated"}
    assert report.resumes_at == 1  # every record there links; what is missing is what the checkpoints signed


async def test_a_writer_waits_for_the_lock_off_the_event_loop_and_gives_up_at_its_deadline(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    now = [0.0]
    log = AuditLog(path, KEY, AuditOptions(fsync="never", lock_timeout_s=1.0, clock=lambda: now[0]))
    other = open_lock(lock_path(path))
    assert try_lock(other)  # another process holding the lock (stopped, say)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            now[0] += 0.05
            await anyio.sleep(0.001)

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                with pytest.raises(AuditUnavailableError, match="stayed locked by another process"):
                    await log.write({"event": "start"})
                tg.cancel_scope.cancel()
        assert ticks > 3  # the loop ran while the writer waited
        assert log.healthy  # a busy lock refuses one call; it does not fail the sink
        unlock(other)
        await log.write({"event": "start"})
    finally:
        os.close(other)
        await log.aclose()
    assert verify(path, KEY).ok


async def test_a_rotation_cut_short_between_seal_and_rename_is_finished_by_the_next_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    a = AuditLog(path, KEY, AuditOptions(fsync="never", max_file_bytes=2048))
    b = AuditLog(path, KEY, AuditOptions(fsync="never", max_file_bytes=2048))
    real_rename = os.rename

    def crash(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")  # the rotating process stops right after sealing

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(AuditUnavailableError):
        for i in range(100):
            await a.write({"event": "start", "call_id": f"a{i}"})
    monkeypatch.setattr(os, "rename", real_rename)
    assert records(path)[-1]["event"] == "rotate" and len(segment_files(path)) == 1
    await b.write({"event": "start", "call_id": "b"})
    await b.aclose()
    await a.aclose()
    assert len(segment_files(path)) == 2 and records(path)[-1]["call_id"] == "b"
    assert verify(path, KEY).ok


async def test_an_active_file_moved_away_by_something_else_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.audit_writer as writer_module

    monkeypatch.setattr(writer_module, "NAME_CHECK_S", 0.0)  # check the name before every append
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY, AuditOptions(fsync="never"))
    await log.write({"event": "start", "call_id": "1"})
    os.rename(path, path.with_name("audit.jsonl.000001"))  # archived by hand, say
    await log.write({"event": "start", "call_id": "2"})
    await log.aclose()
    assert [r["call_id"] for r in records(path)] == ["1", "2"]
    assert path.exists() and verify(path, KEY).ok


async def test_write_now_writes_only_what_needs_no_wait_and_says_when_it_wrote_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY, AuditOptions(fsync="group"))
    other = open_lock(lock_path(path))
    try:
        assert log.write_now({"event": "start", "call_id": "1"}, False)
        assert log.write_now({"event": "finish", "call_id": "1"}, alone=True)  # a lone writer syncs right here
        assert log._synced_gen == log._written_gen == 2 and log.inline_syncs >= 1
        assert not log.write_now({"event": "finish", "call_id": "2"}, alone=False)  # others may share a sync
        log.sync_s = 0.05
        assert not log.write_now({"event": "finish", "call_id": "3"}, alone=True)  # a slow disk: the thread
        log.sync_s = 0.0
        assert try_lock(other)  # another process appending
        assert not log.write_now({"event": "start", "call_id": "4"}, False)
        unlock(other)
    finally:
        os.close(other)
        await log.aclose()
    assert [r["call_id"] for r in records(path)] == ["1", "1"]
    assert verify(path, KEY).ok
