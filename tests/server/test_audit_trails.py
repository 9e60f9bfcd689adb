"""`model-gateway audit verify` over one trail or a folder of many (replicas, machines), each reported on its own."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import anyio
import pytest

from server.audit import AuditLog, AuditOptions, canonical, segment_files
from server.audit_key import load_or_create_key
from server.audit_trails import find_trails
from server.cli import main

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODEL_GATEWAY_AUDIT_KEY", "MODEL_GATEWAY_AUDIT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


async def trail(log: Path, n: int, key_file: Path | None = None) -> None:
    """A replica's trail, with its own key file beside it (or the one given)."""
    key = partial(load_or_create_key, None, key_file or log.with_name("audit.key"), log)
    sink = AuditLog(log, key, AuditOptions(fsync="never", max_file_bytes=4096, checkpoint_every=5))
    for i in range(n):
        await sink.write({"event": "start", "call_id": f"{log.parent.name}-{i}"})
    await sink.aclose()


def edit_one(log: Path) -> None:
    first = segment_files(log)[0][1]
    lines = first.read_bytes().splitlines()
    rec = json.loads(lines[1])
    rec["principal"] = "mallory"
    lines[1] = canonical(rec)
    first.write_bytes(b"".join(x + b"\n" for x in lines))


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The command's exit code and what it printed (stdout, then stderr)."""
    code = main(["audit", "verify", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def test_a_folder_of_replica_state_dirs_is_checked_trail_by_trail_each_with_its_own_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("r1", "r2", "r3"):
        await trail(tmp_path / name / "audit" / "audit.jsonl", 40)
    edit_one(tmp_path / "r2" / "audit" / "audit.jsonl")
    code, out = run_cli(capsys, str(tmp_path))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("r1/audit/audit.jsonl: ok: 42 records in 3 file(s)")  # 2 rotation seals
    assert lines[1].startswith("r2/audit/audit.jsonl: DAMAGED: edited at audit.jsonl.000001:2 (seq 2)")
    assert lines[2].startswith("r3/audit/audit.jsonl: ok: 42 records in 3 file(s)")
    assert lines[-1] == "3 trails: 2 ok, 1 not"
    code, out = run_cli(capsys, "--json", str(tmp_path))
    result = json.loads(out)
    assert code == 1 and result["ok"] is False
    verdicts = [(Path(t["path"]).parts[-3], t["ok"]) for t in result["trails"]]
    assert verdicts == [("r1", True), ("r2", False), ("r3", True)]
    assert result["trails"][1]["damage"]["kind"] == "edited" and result["trails"][1]["resumes_at"] == 3


async def test_trails_side_by_side_in_one_folder_are_found_by_their_companions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "team.key"
    for name in ("replica-a", "replica-b"):
        await trail(tmp_path / "logs" / f"{name}.jsonl", 12, key_file=shared)
    (tmp_path / "logs" / "notes.jsonl").write_text('{"not": "a trail"}\n')
    assert [p.name for p in find_trails(tmp_path)] == ["replica-a.jsonl", "replica-b.jsonl"]
    code, out = run_cli(capsys, "--key-file", str(shared), str(tmp_path / "logs"))
    assert code == 0, out
    assert out.splitlines()[-1] == "2 trails: 2 ok, 0 not"


async def test_a_trail_without_its_key_is_reported_unchecked_and_the_others_are_still_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("r1", "r2"):
        await trail(tmp_path / name / "audit.jsonl", 5)
    (tmp_path / "r2" / "audit.key").unlink()
    code, out = run_cli(capsys, str(tmp_path))
    assert code == 1
    assert "r1/audit.jsonl: ok: 5 records" in out
    assert "r2/audit.jsonl: NOT CHECKED: no audit key for" in out


async def test_one_trail_prints_one_summary_and_keeps_its_json_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit" / "audit.jsonl"
    await trail(log, 20)
    code, out = run_cli(capsys, str(tmp_path / "audit"))
    assert code == 0 and out.startswith("ok: 21 records in 2 file(s)")
    code, out = run_cli(capsys, "--json", str(log))
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["records"] == 21 and result["damage"] is None
    assert len(result["trails"]) == 1


async def test_a_folder_with_no_trail_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, str(tmp_path))
    assert code == 2 and "no audit log there" in out


def test_the_search_is_bounded_and_follows_no_links(tmp_path: Path) -> None:
    anyio.run(trail, tmp_path / "real" / "audit.jsonl", 3)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    deep = tmp_path.joinpath(*[f"d{i}" for i in range(12)])
    anyio.run(trail, deep / "audit.jsonl", 3)
    assert find_trails(tmp_path) == [tmp_path / "real" / "audit.jsonl"]
