"""Session flood: N sessions opened by one principal and abandoned, with the shipped limits.

    python -m benchmarks.hostile.http --flood 10000 [--server-root DIR]

Prints whether anyone was refused (the flooder, a newcomer) and what the sessions cost in memory.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio
import httpx2

from benchmarks.hostile.http import TOKENS, gateway, rss_mib
from tests.support.hanging_upstream import HangingOllama
from tests.support.mcp_http import headers, initialize_message
from tests.support.processes import ROOT


async def flood(openings: int, server_root: Path = ROOT) -> dict[str, float]:
    """`openings` sessions opened by one principal and abandoned, with the shipped limits; then newcomers."""
    with (
        tempfile.TemporaryDirectory(prefix="hostile-flood-") as scratch,
        HangingOllama(60, "HANG-HERE") as up,
        gateway(Path(scratch), up.url, "streamable-http", server_root, front_door=None) as proc,
    ):
        url = f"http://127.0.0.1:{proc.port}/mcp"  # type: ignore[attr-defined]
        return await _flood(url, proc.pid, openings)


async def _flood(url: str, pid: int, openings: int) -> dict[str, float]:
    limits = httpx2.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx2.AsyncClient(timeout=30, limits=limits) as http:
        await http.post(url, json=initialize_message(), headers=headers(TOKENS["carol"]))
        idle = rss_mib(pid, "VmRSS")
        refused = 0
        left = iter(range(openings))
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal refused
            for _ in left:
                r = await http.post(url, json=initialize_message(), headers=headers(TOKENS["bob"]))
                refused += r.status_code == 503

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
        wall = time.perf_counter() - started
        after, peak = rss_mib(pid, "VmRSS"), rss_mib(pid, "VmHWM")
        others = await http.post(url, json=initialize_message(), headers=headers(TOKENS["alice"]))
        again = await http.post(url, json=initialize_message(), headers=headers(TOKENS["bob"]))
    return {
        "openings": openings,
        "refused": refused,
        "wall_s": round(wall, 1),
        "newcomer_status": others.status_code,
        "flooder_again_status": again.status_code,
        "idle_rss_mib": round(idle, 1),
        "after_rss_mib": round(after, 1),
        "peak_rss_mib": round(peak, 1),
    }
