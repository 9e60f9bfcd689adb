"""`model-gateway audit verify PATH`: one trail, or every trail under a folder, each reported on its own.

PATH is a trail's active file (`audit.jsonl`), the folder holding it, or any
folder above several trails: the state dirs of several machines or replicas
copied under one parent, or trails kept side by side (`replica-a.jsonl` with
`replica-a.checkpoints.jsonl`). A trail is an `audit.jsonl`, or any `X.jsonl`
with a checkpoint file, a lock file or rotated segments beside it.

The key for every trail is `--key-file`, else MODEL_GATEWAY_AUDIT_KEY, else
MODEL_GATEWAY_AUDIT_KEY_FILE; without any of these each trail uses the key
file beside it (`X.key`, then `audit.key`), so replicas with their own keys
are checked in one run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.audit_chain import segment_files
from server.audit_key import parse_key, read_key_file
from server.audit_verify import Damage, VerifyReport, verify
from server.errors import AuditUnavailableError, ConfigError

MAX_TRAILS = 1_000
MAX_DEPTH = 8
_SEGMENT = re.compile(r"^(.+\.jsonl)\.\d{6}$")
_CHECKPOINTS = ".checkpoints.jsonl"


def find_trails(root: Path) -> list[Path]:
    """The active-file path of every trail at or under `root` (bounded in depth and count; links not followed)."""
    if not root.is_dir():
        return [root] if any(p.exists() for _, p in segment_files(root)) else []
    found: set[Path] = set()
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirs[:] = []
        names = set(files)
        for name in files:
            trail = _trail_of(name, names)
            if trail is not None:
                found.add(here / trail)
        if len(found) > MAX_TRAILS:
            raise ConfigError(f"{root}: more than {MAX_TRAILS} audit trails; point at a narrower folder")
    return sorted(found)


def _trail_of(name: str, siblings: set[str]) -> str | None:
    if name.endswith(_CHECKPOINTS):
        active = name[: -len(_CHECKPOINTS)] + ".jsonl"
        return active if active == "audit.jsonl" or active in siblings else None
    if (m := _SEGMENT.match(name)) is not None:
        return m.group(1)
    if name.endswith(".jsonl"):
        stem = name[: -len(".jsonl")]
        companions = {stem + _CHECKPOINTS, name + ".lock", name + ".000001"}
        return name if name == "audit.jsonl" or companions & siblings else None
    return None


def _shared_key(key_file: Path | None, env: Mapping[str, str]) -> bytes | None:
    try:
        if key_file is not None:
            return read_key_file(key_file)
        if env.get("MODEL_GATEWAY_AUDIT_KEY"):
            return parse_key(env["MODEL_GATEWAY_AUDIT_KEY"], "MODEL_GATEWAY_AUDIT_KEY")
        if env.get("MODEL_GATEWAY_AUDIT_KEY_FILE"):
            return read_key_file(Path(env["MODEL_GATEWAY_AUDIT_KEY_FILE"]))
    except AuditUnavailableError as exc:
        raise ConfigError(str(exc)) from exc
    return None


def key_beside(trail: Path) -> bytes:
    stem = trail.name[: -len(".jsonl")] if trail.name.endswith(".jsonl") else trail.name
    for candidate in (trail.with_name(stem + ".key"), trail.with_name("audit.key")):
        if candidate.is_file():
            return read_key_file(candidate)
    raise AuditUnavailableError(f"no audit key for {trail}: pass --key-file or set MODEL_GATEWAY_AUDIT_KEY")


def summary(report: VerifyReport) -> str:
    fixed = f"; cut a torn last line ({report.repaired_bytes} bytes)" if report.repaired_bytes else ""
    if report.ok:
        return f"ok: {report.records} records in {report.segments} file(s), {report.checkpoints} checkpoints{fixed}"
    others = len(report.damages) - 1 + report.more
    text = f"DAMAGED: {report.damage}{fixed}"
    if others:
        text += f"; {others} more damaged place(s)"
    if report.resumes_at is not None:
        text += f"; the records from seq {report.resumes_at} on verify"
    return text


def _damage_json(d: Damage) -> dict[str, Any]:
    return {"kind": d.kind, "file": d.file, "line": d.line, "seq": d.seq, "detail": d.detail}


def _trail_json(trail: Path, report: VerifyReport | None, error: str | None) -> dict[str, Any]:
    if report is None:
        return {
            "path": str(trail),
            "ok": False,
            "summary": f"NOT CHECKED: {error}",
            "records": 0,
            "damage": None,
            "damages": [],
            "repaired_bytes": 0,
            "resumes_at": None,
        }
    return {
        "path": str(trail),
        "ok": report.ok,
        "summary": summary(report),
        "records": report.records,
        "damage": None if report.damage is None else _damage_json(report.damage),
        "damages": [_damage_json(d) for d in report.damages],
        "repaired_bytes": report.repaired_bytes,
        "resumes_at": report.resumes_at,
    }


def verify_command(
    path: Path, key_file: Path | None, repair: bool, env: Mapping[str, str]
) -> tuple[bool, dict[str, Any]]:
    """Verify every trail at or under `path`; the result's `trails` has one entry per trail."""
    trails = find_trails(path)
    if not trails:
        raise ConfigError(f"{path}: no audit log there")
    shared = _shared_key(key_file, env)
    results = []
    for trail in trails:
        try:
            report = verify(trail, shared if shared is not None else key_beside(trail), repair=repair)
            results.append(_trail_json(trail, report, None))
        except (AuditUnavailableError, OSError) as exc:
            if len(trails) == 1:
                raise ConfigError(str(exc)) from exc
            results.append(_trail_json(trail, None, str(exc)))
    ok = all(r["ok"] for r in results)
    if len(results) == 1:
        return ok, {**results[0], "trails": results}
    bad = sum(not r["ok"] for r in results)
    return ok, {"ok": ok, "summary": f"{len(results)} trails: {len(results) - bad} ok, {bad} not", "trails": results}


def verify_text(result: dict[str, Any], root: Path) -> str:
    """What the command prints without --json: the summary, each further damage, one line per trail."""
    trails: list[dict[str, Any]] = result["trails"]
    if len(trails) == 1:
        lines = [str(result["summary"])] + [f"  also: {_str(d)}" for d in trails[0]["damages"][1:]]
        return "\n".join(lines)
    lines = []
    base = root if root.is_dir() else root.parent
    for t in trails:
        lines.append(f"{os.path.relpath(t['path'], base)}: {t['summary']}")
        lines += [f"  also: {_str(d)}" for d in t["damages"][1:]]
    return "\n".join([*lines, str(result["summary"])])


def _str(d: dict[str, Any]) -> str:
    return str(Damage(d["kind"], d["file"], d["line"], d["seq"], d["detail"]))
