from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import anyio
import pytest

from server.discovery import Discovery, read_cached_snapshot
from server.manifests import DiscoveryConfig
from tests.support.fakes import FakeAdapter

pytestmark = pytest.mark.anyio


class RendezvousAdapter(FakeAdapter):
    """A probe that finishes only once every peer's probe has started: sequential probing deadlocks."""

    def __init__(self, name: str, peers: list[RendezvousAdapter]) -> None:
        super().__init__(name)
        self.peers = peers

    async def probe(self):  # type: ignore[no-untyped-def]
        self.probe_started.set()
        for p in self.peers:
            await p.probe_started.wait()
        return await super().probe()


async def test_probes_run_concurrently() -> None:
    peers: list[RendezvousAdapter] = []
    peers += [RendezvousAdapter(f"a{i}", peers) for i in range(5)]
    discovery = Discovery({p.info.name: p for p in peers}, DiscoveryConfig(probe_deadline_s=5))
    with anyio.fail_after(3):
        snap = await discovery.refresh()
    assert all(s.status == "up" for s in snap.adapters.values())


async def test_a_hanging_probe_is_cut_at_its_deadline_and_others_are_recorded() -> None:
    hang = FakeAdapter("hang", probe_delay_s=3600)
    ok = FakeAdapter("ok")
    dead = FakeAdapter("dead", probe_ok=False)
    discovery = Discovery({"hang": hang, "ok": ok, "dead": dead}, DiscoveryConfig(probe_deadline_s=0.1))
    with anyio.fail_after(2):
        snap = await discovery.refresh()
    assert snap.adapters["ok"].status == "up"
    assert snap.adapters["dead"].status == "down" and snap.adapters["dead"].error == "refused"
    assert snap.adapters["hang"].status == "down" and "timed out" in (snap.adapters["hang"].error or "")


async def test_snapshot_round_trips_through_the_disk_cache(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    adapters = {"a": FakeAdapter("a", {"x": {"embed", "rerank"}}), "b": FakeAdapter("b", probe_ok=False)}
    first = await Discovery(adapters, DiscoveryConfig(), path).refresh()
    second = Discovery(adapters, DiscoveryConfig(), path)
    assert second.load_cache() is True
    assert second.snapshot.source == "cache"
    assert second.snapshot.adapters == first.adapters
    assert second.snapshot.created_at == first.created_at


async def test_a_cached_entry_is_dropped_when_its_manifest_changed(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    await Discovery({"a": FakeAdapter("a", {"x": {"embed"}})}, DiscoveryConfig(), path).refresh()
    changed = {"a": FakeAdapter("a", {"y": {"embed"}})}
    snap = read_cached_snapshot(path, changed)
    assert snap is not None and snap.adapters["a"].status == "unknown"
    assert [m.name for m in snap.adapters["a"].models] == ["y"]


async def test_a_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    path.write_text("{not json")
    assert Discovery({"a": FakeAdapter("a")}, DiscoveryConfig(), path).load_cache() is False
    path.write_text(json.dumps({"version": 1, "created_at": 1, "adapters": {"a": {"kind": 1}}}))
    assert Discovery({"a": FakeAdapter("a")}, DiscoveryConfig(), path).load_cache() is False


async def test_background_loop_revalidates_a_cached_snapshot_after_the_start_grace_and_on_contradicting_calls(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snap.json"
    a = FakeAdapter("a")
    await Discovery({"a": a}, DiscoveryConfig(), path).refresh()
    config = DiscoveryConfig(ttl_s=3600, down_recheck_s=3600, revalidate_after_start_s=0.3)
    discovery = Discovery({"a": a}, config, path)
    discovery.load_cache()
    async with anyio.create_task_group() as tg:
        started = anyio.current_time()
        with anyio.fail_after(2):
            tg.start_soon(discovery.run)
            snap = await discovery.next_refresh()
        assert anyio.current_time() - started >= 0.3  # the client's handshake goes first
        assert snap.source == "probe" and discovery.refreshes == 1
        discovery.observe_call("a", ok=False)  # snapshot says up, the call failed
        with anyio.fail_after(2):
            await discovery.next_refresh()
        discovery.observe_call("a", ok=True)  # agrees with the snapshot: no refresh
        await anyio.sleep(0.05)
        assert discovery.refreshes == 2
        tg.cancel_scope.cancel()


class WideningAdapter(FakeAdapter):
    """Like an Ollama manifest without models: `info` learns the server's models at the first probe."""

    async def probe(self):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        from adapters.base import ModelInfo

        result = await super().probe()
        learned = (ModelInfo("learned", frozenset({"chat"})),)
        self.info = replace(self.info, models=learned)
        return replace(result, models=learned)


async def test_the_cache_survives_adapters_that_learn_models_at_probe_time(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    await Discovery({"w": WideningAdapter("w", {})}, DiscoveryConfig(), path).refresh()
    fresh = Discovery({"w": WideningAdapter("w", {})}, DiscoveryConfig(), path)
    assert fresh.load_cache()
    assert fresh.snapshot.adapters["w"].status == "up"
    assert [m.name for m in fresh.snapshot.adapters["w"].models] == ["learned"]


async def test_a_burst_of_contradicting_calls_causes_one_refresh_not_one_each(tmp_path: Path) -> None:
    a = FakeAdapter("a")
    discovery = Discovery({"a": a}, DiscoveryConfig(ttl_s=3600, down_recheck_s=3600))
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            tg.start_soon(discovery.run)
            await discovery.next_refresh()
            for _ in range(50):  # every call fails while the snapshot says up
                discovery.observe_call("a", ok=False)
            await discovery.next_refresh()
        assert discovery.refreshes == 2
        tg.cancel_scope.cancel()


async def test_a_contradicting_call_during_the_start_grace_revalidates_at_once(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    a = FakeAdapter("a")
    await Discovery({"a": a}, DiscoveryConfig(), path).refresh()
    discovery = Discovery({"a": a}, DiscoveryConfig(revalidate_after_start_s=60), path)
    discovery.load_cache()
    async with anyio.create_task_group() as tg:
        tg.start_soon(discovery.run)
        await anyio.sleep(0.05)
        assert discovery.refreshes == 0
        discovery.observe_call("a", ok=False)  # cached snapshot says up, the call failed
        with anyio.fail_after(2):
            await discovery.next_refresh()
        tg.cancel_scope.cancel()


async def test_without_a_cache_probes_start_at_once(tmp_path: Path) -> None:
    discovery = Discovery({"a": FakeAdapter("a")}, DiscoveryConfig(revalidate_after_start_s=60), tmp_path / "s.json")
    assert discovery.load_cache() is False
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(2):
            tg.start_soon(discovery.run)
            await discovery.next_refresh()
        tg.cancel_scope.cancel()


def _valid_snapshot(path: Path) -> bytes:
    anyio.run(Discovery({"a": FakeAdapter("a")}, DiscoveryConfig(), path).refresh)
    return path.read_bytes()


def _flip(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(3):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


BAD_SNAPSHOTS = {
    "a list": lambda good: b"[]",
    "null": lambda good: b"null",
    "adapters as a list": lambda good: json.dumps({"version": 1, "created_at": 1, "adapters": []}).encode(),
    "another version": lambda good: good.replace(b'"version":1', b'"version":2'),
    "dated in the future": lambda good: json.dumps({"version": 1, "created_at": 1e12, "adapters": {}}).encode(),
    "zero length": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "byte flips": lambda good: _flip(good, 7),
    "deeply nested": lambda good: b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("bad", list(BAD_SNAPSHOTS))
async def test_a_snapshot_of_the_wrong_shape_is_ignored_reported_once_and_rewritten(
    tmp_path: Path, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache" / "snap.json"
    good = await anyio.to_thread.run_sync(_valid_snapshot, path)
    planted = BAD_SNAPSHOTS[bad](good)
    path.write_bytes(planted)
    adapters = {"a": FakeAdapter("a")}
    with caplog.at_level("WARNING", logger="model_gateway.discovery"):
        loaded = [Discovery(adapters, DiscoveryConfig(), path).load_cache() for _ in range(2)]
    assert loaded == [False, False]
    assert len([r for r in caplog.records if str(path) in r.getMessage()]) == 1
    fresh = Discovery(adapters, DiscoveryConfig(), path)
    await fresh.refresh()
    assert path.read_bytes() != planted and Discovery(adapters, DiscoveryConfig(), path).load_cache() is True


async def test_a_snapshot_others_can_write_is_not_served_and_is_rewritten_private(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "snap.json"
    await anyio.to_thread.run_sync(_valid_snapshot, path)
    os.chmod(path, 0o666)
    adapters = {"a": FakeAdapter("a")}
    assert Discovery(adapters, DiscoveryConfig(), path).load_cache() is False
    await Discovery(adapters, DiscoveryConfig(), path).refresh()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Discovery(adapters, DiscoveryConfig(), path).load_cache() is True


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
async def test_a_snapshot_owned_by_someone_else_is_not_served_and_is_rewritten_as_ours(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "snap.json"
    await anyio.to_thread.run_sync(_valid_snapshot, path)
    os.chown(path, 65534, 65534)
    adapters = {"a": FakeAdapter("a")}
    assert Discovery(adapters, DiscoveryConfig(), path).load_cache() is False
    await Discovery(adapters, DiscoveryConfig(), path).refresh()
    assert path.stat().st_uid == os.geteuid()


async def test_the_cache_folder_and_snapshot_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".cache" / "model-gateway" / "snap.json"
    old = os.umask(0)
    try:
        await Discovery({"a": FakeAdapter("a")}, DiscoveryConfig(), path).refresh()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
