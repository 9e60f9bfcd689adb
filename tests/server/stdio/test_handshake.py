"""The signed handshake cache: what it serves, and everything it refuses to serve."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from server.stdio.handshake import CACHE_FILE, KEY_FILE, HandshakeCache, fingerprint, key

INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "g", "version": "0"}}
TOOLS = {"tools": [{"name": "embed", "inputSchema": {"type": "object"}}]}
ANSWERS = {key("initialize", "2025-11-25"): INIT, key("tools/list", "2025-11-25"): TOOLS}


def saved(cache_dir: Path, fp: str = "fp") -> HandshakeCache:
    cache = HandshakeCache.load(cache_dir, fp)
    cache.answers.update(ANSWERS)
    cache.save()
    return cache


def test_answers_saved_by_this_user_come_back_for_the_same_fingerprint_only(tmp_path: Path) -> None:
    saved(tmp_path)
    assert HandshakeCache.load(tmp_path, "fp").answers == ANSWERS
    assert HandshakeCache.load(tmp_path, "other").answers == {}


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b.replace(b"2025-11-25", b"2025-11-26", 1),  # one changed digit
        lambda b: b.replace(b'"tools":[', b'"tools":[{"name":"fake","inputSchema":{}},', 1),
        lambda b: b[: len(b) // 2],  # torn
        lambda b: b"",
        lambda b: b"\x00" * 100,
        lambda b: b.replace(b"model-gateway-stdio-handshake 2", b"model-gateway-stdio-handshake 1", 1),
    ],
    ids=["digit", "injected-tool", "truncated", "empty", "zeros", "other-format"],
)
def test_a_changed_file_is_never_served_and_a_save_makes_it_whole_again(tmp_path: Path, damage: object) -> None:
    saved(tmp_path)
    path = tmp_path / CACHE_FILE
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    assert HandshakeCache.load(tmp_path, "fp").answers == {}
    saved(tmp_path)
    assert HandshakeCache.load(tmp_path, "fp").answers == ANSWERS


def test_a_signed_file_of_the_wrong_shape_is_not_served(tmp_path: Path) -> None:
    cache = HandshakeCache.load(tmp_path, "fp")
    cache.answers = {key("initialize", "2025-11-25"): {"protocolVersion": 3}, "nonsense|x": {}}
    cache.save()
    assert HandshakeCache.load(tmp_path, "fp").answers == {}


def test_a_file_others_can_write_is_not_served(tmp_path: Path) -> None:
    saved(tmp_path)
    os.chmod(tmp_path / CACHE_FILE, 0o666)
    assert HandshakeCache.load(tmp_path, "fp").answers == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_file_owned_by_someone_else_is_not_served(tmp_path: Path) -> None:
    saved(tmp_path)
    os.chown(tmp_path / CACHE_FILE, 4242, 4242)
    assert HandshakeCache.load(tmp_path, "fp").answers == {}


def test_the_key_is_created_private_whatever_the_umask_and_one_key_wins_among_concurrent_starts(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "model-gateway"
    old = os.umask(0)
    try:
        caches: list[HandshakeCache] = []
        threads = [threading.Thread(target=lambda: caches.append(saved(folder))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.umask(old)
    assert (folder / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700 and (folder / CACHE_FILE).stat().st_mode & 0o777 == 0o600
    assert HandshakeCache.load(folder, "fp").answers == ANSWERS  # every writer signed with the one key
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_key_others_can_read_is_replaced_so_what_it_signed_is_no_longer_served(tmp_path: Path) -> None:
    saved(tmp_path)
    key_path = tmp_path / KEY_FILE
    before = key_path.read_bytes()
    os.chmod(key_path, 0o644)
    assert HandshakeCache.load(tmp_path, "fp").answers == {}
    assert key_path.read_bytes() != before and key_path.stat().st_mode & 0o777 == 0o600


def test_no_usable_key_means_nothing_served_or_saved_and_no_crash(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    cache = HandshakeCache.load(blocked, "fp")
    cache.answers.update(ANSWERS)
    cache.save()
    assert cache.answers == ANSWERS and HandshakeCache.load(blocked, "fp").answers == {}


def test_the_fingerprint_follows_options_and_environment_and_hides_secret_values() -> None:
    env = {"MODEL_GATEWAY_PRIVACY_MODE": "0", "MODEL_GATEWAY_AUTH_TOKEN": "s3cret", "PATH": "/bin"}
    base = fingerprint(["a"], env)
    assert base == fingerprint(["a"], {**env, "PATH": "/usr/bin"})
    assert base != fingerprint(["b"], env)
    assert base != fingerprint(["a"], {**env, "MODEL_GATEWAY_PRIVACY_MODE": "1"})
    assert base == fingerprint(["a"], {**env, "MODEL_GATEWAY_AUTH_TOKEN": "other"})  # only whether it is set
