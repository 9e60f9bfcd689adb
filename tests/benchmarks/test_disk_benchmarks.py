"""The disk benchmarks run end to end in tiny configurations and print what they promise (no timings checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def run(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_audit_cost_at_one_and_several_processes_is_measured_and_the_shared_trail_verifies(tmp_path: Path) -> None:
    out = run("benchmarks.audit_procs", "--dir", str(tmp_path), "--calls", "20", "--procs", "1,2", "--rounds", "1")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("1", "shared"), ("2", "shared"), ("2", "apart")]
    assert all(r[-1] == "ok" for r in rows)


def test_audit_fsync_modes_are_measured(tmp_path: Path) -> None:
    out = run("benchmarks.audit_fsync", "--dir", str(tmp_path), "--calls", "20", "--concurrency", "4")
    modes = [line.split()[0] for line in out.splitlines()[1:]]
    assert modes == ["always", "group-5ms", "group-1ms", "group-0ms", "never"]


def test_the_kill_campaign_prints_its_figures() -> None:
    out = run("benchmarks.many_processes", "--slots", "2", "--kills", "2", "--tries", "1", "--deadline", "120")
    totals = out.splitlines()[-1].split()
    assert totals[0] == "all" and int(totals[2]) >= 2  # kills
    assert totals[4] == "0" and totals[5] == "0"  # nothing lost, no failed restart


def test_a_checkout_is_compared_with_a_baseline_checkout(tmp_path: Path) -> None:
    out = run("benchmarks.audit_compare", "--baseline", str(ROOT), "--rounds", "2", "--calls", "20", "--modes", "never")
    row = out.splitlines()[-1].split()
    assert row[0] == "never" and float(row[1]) > 0 and float(row[2]) > 0
