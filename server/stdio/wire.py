"""The stdio wire: lines in from the client's descriptor, bytes out to the other.

`LineReader` and `LineWriter` wait on the event loop for a pipe or socket to be ready and
then read or write without blocking, instead of handing every line to a worker thread (the
SDK's default, ~0.1 ms a hop on this kind of machine, twice per response). A line is written
in pieces no larger than what a ready descriptor always takes whole, each after a zero-wait
poll (waiting on the event loop only when the client is behind), so an answer of a few pages,
such as an embedding, needs no thread either. Regular files and character devices, which
cannot be polled, and lines over INLINE_LINE_MAX still go through a worker thread. Lines are
split and capped by `server.stdio.lines`.
"""

from __future__ import annotations

import os
import select
from collections import deque

import anyio
import anyio.to_thread

from server.stdio.fd import pollable, write_all
from server.stdio.lines import LineSplitter, TooLong

READ_CHUNK = 1 << 16
# Linux reports a pipe writable while one page slot is free: a write this small then never blocks.
INLINE_WRITE_MAX = 4096
# Longer lines go to a worker thread: written piece by piece on the loop they would hold it too long.
INLINE_LINE_MAX = 64 << 10


class LineReader:
    """`next()` returns the next line (without its newline), a `TooLong` marker, or None at the end."""

    def __init__(self, fd: int, splitter: LineSplitter, *, eof: bool = False) -> None:
        self._fd = fd
        self._splitter = splitter
        self._ready: deque[bytes | TooLong] = deque()
        self._pollable = pollable(fd)
        self._eof = eof
        if eof:
            self._ready.extend(splitter.close())

    async def next(self) -> bytes | TooLong | None:
        while not self._ready:
            if self._eof:
                return None
            chunk = await self._read()
            if chunk:
                self._ready.extend(self._splitter.feed(chunk))
            else:
                self._eof = True
                self._ready.extend(self._splitter.close())
        return self._ready.popleft()

    async def _read(self) -> bytes:
        if not self._pollable:
            return await anyio.to_thread.run_sync(os.read, self._fd, READ_CHUNK, abandon_on_cancel=True)
        while True:
            await anyio.wait_readable(self._fd)
            try:
                return os.read(self._fd, READ_CHUNK)
            except BlockingIOError:
                continue


class LineWriter:
    """Writes whole lines; nothing is buffered here (each write reaches the descriptor before it returns)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poll: select.poll | None = None
        if pollable(fd):
            self._poll = select.poll()
            self._poll.register(fd, select.POLLOUT)

    async def write(self, data: bytes) -> None:
        if self._poll is None or len(data) > INLINE_LINE_MAX:
            await anyio.to_thread.run_sync(write_all, self._fd, data)
            return
        view = memoryview(data)
        while view:
            if not self._poll.poll(0):
                await anyio.wait_writable(self._fd)
            view = view[os.write(self._fd, view[:INLINE_WRITE_MAX]) :]
