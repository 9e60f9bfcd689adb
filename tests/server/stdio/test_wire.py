"""The line reader and writer on real descriptors."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import anyio
import pytest

from server.stdio.lines import LineSplitter, TooLong
from server.stdio.wire import LineReader, LineWriter

pytestmark = pytest.mark.anyio


async def read_all(reader: LineReader) -> list[bytes | TooLong]:
    out: list[bytes | TooLong] = []
    with anyio.fail_after(10):
        while (item := await reader.next()) is not None:
            out.append(item)
    return out


async def test_line_reader_continues_a_splitter_mid_line_and_reads_whole_lines_from_a_pipe() -> None:
    r, w = os.pipe()
    splitter = LineSplitter(64)
    assert splitter.feed(b'{"a":') == []  # what the fast start read before the handover

    def feed() -> None:
        for piece in (b"1}\n", b'{"b"', b":2}\n" + b"x" * 100 + b"\n", b'{"c":3}'):
            os.write(w, piece)
        os.close(w)

    threading.Thread(target=feed).start()
    lines = await read_all(LineReader(r, splitter))
    os.close(r)
    assert lines == [b'{"a":1}', b'{"b":2}', TooLong(100, b"x" * 100), b'{"c":3}']


async def test_line_reader_reads_a_regular_file_through_a_worker_thread(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"one\ntwo\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert await read_all(LineReader(fd, LineSplitter(100))) == [b"one", b"two"]
    finally:
        os.close(fd)


async def test_line_writer_writes_small_lines_inline_and_large_ones_whole() -> None:
    r, w = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    writer = LineWriter(w)
    big = b"x" * 300_000 + b"\n"
    with anyio.fail_after(10):
        await writer.write(b"small\n")
        await writer.write(big)
    os.close(w)
    reader.join(5)
    os.close(r)
    assert bytes(received) == b"small\n" + big


async def test_a_line_of_a_few_pages_is_written_on_the_loop_and_waits_there_while_the_client_is_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a line of a few pages went to a worker thread")

    monkeypatch.setattr(anyio.to_thread, "run_sync", no_thread)
    r, w = os.pipe()
    stuffed = 0
    os.set_blocking(w, False)
    try:  # fill the pipe: the client is behind
        while True:
            stuffed += os.write(w, b"." * 4096)
    except BlockingIOError:
        os.set_blocking(w, True)
    line = b"y" * 15_000 + b"\n"
    ticks = 0
    received = bytearray()

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as inner:
                inner.start_soon(LineWriter(w).write, line)
                await anyio.sleep(0.05)
                before = ticks
                os.set_blocking(r, False)
                while len(received) < stuffed + len(line):
                    with contextlib.suppress(BlockingIOError):
                        received.extend(os.read(r, 1 << 16))
                    await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    os.close(w)
    os.close(r)
    assert before >= 3  # the event loop kept running while the write waited
    assert bytes(received[stuffed:]) == line
