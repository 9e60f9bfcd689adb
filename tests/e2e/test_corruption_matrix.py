"""Every file the gateway owns, damaged every way: the server still starts, serves, and repairs or reports.

For each kind of damage (truncated, zero length, wrong JSON shape, random byte
flips, mode 0666, another owner) the discovery snapshot, the remote-MCP tool
catalog, the audit log and its checkpoints are all damaged at once, then a real
`serve` process over stdio answers a call. Afterwards the caches are rewritten
(valid, ours, 0600), the trail's files are ours and 0600, and `audit verify`
either passes or reports the damage and says the trail verifies again from a
seq no later than the new call's. (Self-repair for the trail never rewrites an
acknowledged line: torn bytes are cut, anything else stays and is reported; the
chain goes on after it.) Cutting the log and its checkpoints alike (truncated,
zero length) is the one damage no verifier can see without a copy of the
checkpoints kept elsewhere; the README says so. The audit key is the one file
that is not simply rewritten while a trail depends on it: that case is refused
with the file named.
"""

from __future__ import annotations

import json
import os
import random
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from adapters._mcp_catalog import parse_catalog
from server.audit_chain import checkpoints_path
from server.discovery import read_cached_snapshot
from tests.support.gateway import disabled_adapter
from tests.support.many import cli_verify
from tests.support.processes import ROOT, stdio_params

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
NO_ENV_KEY = {"MODEL_GATEWAY_AUDIT_KEY": "", "MODEL_GATEWAY_LOG_LEVEL": "WARNING"}


def manifests(root: Path) -> Path:
    """Embeds go to a downstream MCP server, so the tool catalog cache is written and read."""
    (root / "adapters").mkdir(parents=True)
    down = {
        "name": "down",
        "kind": "mcp",
        "command": [sys.executable, "-m", "tests.support.downstream_mcp"],
        "cwd": str(ROOT),
        "env": {"PYTHONPATH": str(ROOT)},
        "models": [{"name": "toy-embed", "capabilities": ["embed"]}],
        "tools": {"embed": {"tool": "embed", "arguments": {"input": "input", "model": "model"}}},
    }
    (root / "adapters" / "down.json").write_text(json.dumps(down))
    (root / "adapters" / "mlx.json").write_text(json.dumps(disabled_adapter("mlx")))
    (root / "routes.json").write_text(json.dumps({"routes": {"embed": ["down/toy-embed"]}}))
    perf = json.loads((ROOT / "manifests" / "performance-config.json").read_text())
    perf["audit"] |= {"capture_content": True, "checkpoint_every": 2}
    (root / "performance-config.json").write_text(json.dumps(perf))
    return root


def files(home: Path) -> dict[str, Path]:
    cache = home / ".cache" / "model-gateway"
    log = home / ".local" / "state" / "model-gateway" / "audit" / "audit.jsonl"
    return {
        "snapshot": cache / "discovery-snapshot.json",
        "catalog": cache / "mcp-tools-down.json",
        "log": log,
        "checkpoints": checkpoints_path(log),
        "key": log.with_name("audit.key"),
    }


async def session(
    home: Path, man: Path, text: str, wait_for_snapshot: bool = False, calls: int = 1
) -> tuple[bool, str]:
    """One host session: embed calls (the last with `text`); whether they were answered, and what the tool said."""
    with anyio.fail_after(90):
        async with Client(stdio_params(home, man, env=NO_ENV_KEY)) as client:
            for i in range(calls - 1):
                await client.call_tool("embed", {"input": [f"{text} {i}"]})
            result = await client.call_tool("embed", {"input": [text]})
            for _ in range(400 if wait_for_snapshot else 0):  # the probe a rejected cache starts rewrites it
                if _snapshot_ok(files(home)["snapshot"]):
                    break
                await anyio.sleep(0.05)
    return not result.is_error, str(result.content[0])


def _snapshot_ok(path: Path) -> bool:
    return path.exists() and read_cached_snapshot(path, {}) is not None


def _flip(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(3):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _last_line(data: bytes, replacement: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join([*lines[:-1], replacement + b"\n"])


Damage = Callable[[str, Path], None]


def _rewrite(change: Callable[[str, bytes], bytes]) -> Damage:
    def damage(name: str, path: Path) -> None:
        path.write_bytes(change(name, path.read_bytes()))

    return damage


def _chown(name: str, path: Path) -> None:
    os.chown(path, 65534, 65534)


JSON_FILES = ("snapshot", "catalog")
DAMAGE: dict[str, Damage] = {
    "truncated": _rewrite(lambda name, b: b[: len(b) // 2]),
    "zero length": _rewrite(lambda name, b: b""),
    "wrong JSON shape": _rewrite(
        lambda name, b: (
            (b"[]" if name == "snapshot" else b'{"adapters": []}') if name in JSON_FILES else _last_line(b, b"null")
        )
    ),
    "random byte flips": _rewrite(lambda name, b: _flip(b, len(name))),
    "mode 0666": lambda name, path: os.chmod(path, 0o666),
    "another owner": _chown,
}


@pytest.mark.parametrize("kind", list(DAMAGE))
async def test_damaged_caches_and_trail_files_still_serve_and_are_rewritten_or_reported(
    tmp_path: Path, kind: str
) -> None:
    if kind == "another owner" and os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    man = manifests(tmp_path / "manifests")
    ok, said = await session(tmp_path, man, "before", calls=6)  # a trail with several checkpoints
    assert ok, said
    owned = files(tmp_path)
    for name in ("snapshot", "catalog", "log", "checkpoints"):
        DAMAGE[kind](name, owned[name])
    ok, said = await session(tmp_path, man, "after the damage", wait_for_snapshot=True)
    assert ok, said
    for name, path in owned.items():
        st = path.stat()
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600, (name, oct(st.st_mode))
    assert parse_catalog(owned["catalog"].read_bytes()).tools["embed"].name == "embed"
    checked = cli_verify(tmp_path, "--json", env=NO_ENV_KEY)
    result = json.loads(checked.stdout)
    after = _seq_of(owned["log"], "after the damage")
    if not result["ok"]:
        assert result["damage"] is not None and result["resumes_at"] is not None, result
        assert result["resumes_at"] <= after, result  # everything from the new call on verifies
    if kind in ("mode 0666", "another owner"):
        assert result["ok"], result["summary"]  # nothing was lost: only who may touch it changed


def _seq_of(log: Path, text: str) -> int:
    for p in sorted(log.parent.glob("audit.jsonl*"), key=lambda p: (p.name == "audit.jsonl", p.name)):
        for line in p.read_bytes().splitlines():
            if text.encode() in line and b'"event":"start"' in line:
                return int(json.loads(line)["seq"])
    raise AssertionError(f"no start record for {text!r}")


async def test_a_damaged_key_that_signs_a_trail_refuses_calls_naming_the_file(tmp_path: Path) -> None:
    man = manifests(tmp_path / "manifests")
    assert (await session(tmp_path, man, "before"))[0]
    key = files(tmp_path)["key"]
    key.write_bytes(b"")  # a full disk under an older version, say
    ok, said = await session(tmp_path, man, "refused")
    assert not ok and str(key) in said and "restore the key file" in said
    assert key.read_bytes() == b""  # left for the user to restore: it may protect the trail


async def test_a_damaged_key_with_no_trail_is_replaced_and_serves(tmp_path: Path) -> None:
    man = manifests(tmp_path / "manifests")
    key = files(tmp_path)["key"]
    key.parent.mkdir(parents=True)
    key.write_bytes(b"\x00\x01garbage")
    os.chmod(key, 0o666)
    ok, said = await session(tmp_path, man, "served")
    assert ok, said
    assert len(bytes.fromhex(key.read_text())) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert cli_verify(tmp_path, env=NO_ENV_KEY).returncode == 0
