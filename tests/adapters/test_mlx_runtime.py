from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest

from adapters.errors import AdapterUnavailableError, InvalidRequestError
from adapters.mlx_runtime import JobContext, OwnerThread
from tests.support.tiny_bert import write_tiny_bert

REPO = Path(__file__).resolve().parents[2]

# MLX work on a non-main thread, then a normal exit: with `close` the adapter is closed first,
# without it the runtime's atexit hook must stop the thread (and clear its streams) itself.
EXIT_SCRIPT = """
import sys, anyio
from pathlib import Path
from adapters.base import AdapterContext
from adapters.manifest import MLXManifest
from adapters.mlx_local import MLXAdapter
from adapters.types import EmbedRequest

async def main(models: Path, close: bool) -> None:
    spec = {"name": "enc", "role": "encoder", "path": "tiny", "capabilities": ["embed"]}
    adapter = MLXAdapter(MLXManifest(kind="mlx", name="mlx", models=[spec]), AdapterContext(models_dir=models))
    with anyio.fail_after(60):
        result = await adapter.embed(EmbedRequest(model="enc", texts=("the cat", "rain")))
    assert len(result.vectors) == 2
    if close:
        await adapter.aclose()

anyio.run(main, Path(sys.argv[1]), sys.argv[2] == "close")
"""


@pytest.mark.anyio
async def test_jobs_run_in_order_on_one_dedicated_thread() -> None:
    runtime = OwnerThread("rt-test")
    try:
        names = [await runtime.run(lambda ctx: threading.current_thread().name) for _ in range(3)]
        assert names == ["rt-test"] * 3 and threading.current_thread().name != "rt-test"
    finally:
        await runtime.aclose()


@pytest.mark.anyio
async def test_a_job_error_reaches_the_caller_unwrapped_even_with_progress() -> None:
    runtime = OwnerThread("rt-test")

    def fail(ctx: JobContext) -> None:
        ctx.report(1, 2, "half")
        raise InvalidRequestError("bad input")

    async def progress(done: float, total: float | None, message: str | None) -> None:
        pass

    try:
        with pytest.raises(InvalidRequestError, match="bad input"):
            await runtime.run(fail, progress=progress)
        assert await runtime.run(lambda ctx: 41 + 1) == 42  # the thread survived the error
    finally:
        await runtime.aclose()


@pytest.mark.anyio
async def test_progress_reports_arrive_before_the_result() -> None:
    runtime = OwnerThread("rt-test")
    seen: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append(done)

    def work(ctx: JobContext) -> str:
        for i in range(1, 6):
            ctx.report(i, 5, None)
        return "done"

    try:
        assert await runtime.run(work, progress=progress) == "done"
        assert seen and seen[-1] == 5 and seen == sorted(seen)
    finally:
        await runtime.aclose()


@pytest.mark.anyio
async def test_a_job_whose_caller_left_before_it_started_is_skipped() -> None:
    runtime = OwnerThread("rt-test")
    release, ran = threading.Event(), threading.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.run, lambda ctx: release.wait(10))
            tg.start_soon(runtime.run, lambda ctx: ran.set())
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        release.set()
        assert await runtime.run(lambda ctx: "after") == "after"
        assert not ran.is_set()
    finally:
        await runtime.aclose()


@pytest.mark.anyio
async def test_closing_stops_a_long_job_at_its_next_checkpoint_and_refuses_new_ones() -> None:
    runtime = OwnerThread("rt-test")
    started = threading.Event()

    def long(ctx: JobContext) -> str:
        started.set()
        while not ctx.should_stop():
            threading.Event().wait(0.002)
        return "stopped"

    async with anyio.create_task_group() as tg:
        tg.start_soon(runtime.run, long)
        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(started.wait)
            await runtime.aclose()
    await runtime.aclose()
    with pytest.raises(AdapterUnavailableError, match="closed"):
        await runtime.run(lambda ctx: None)


def test_processes_that_ran_mlx_on_the_owner_thread_exit_cleanly(tmp_path: Path) -> None:
    write_tiny_bert(tmp_path / "tiny")
    failures = []
    for batch in range(5):  # ten processes, two at a time (one per core)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", EXIT_SCRIPT, str(tmp_path), mode],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for mode in ("close", "exit")
        ]
        for mode, proc in zip(("close", "exit"), procs, strict=True):
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                failures.append(f"run {batch} ({mode}): rc {proc.returncode}: {err[-500:]}")
    assert not failures, failures
