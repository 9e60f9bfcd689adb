"""The stdio wire: JSON-RPC lines in and out of the process's own descriptors.

`LineReader` and `LineWriter` are what the MCP SDK's stdio transport reads
and writes through. On pipes and sockets they wait on the event loop for the
descriptor to be ready and then read or write without blocking, instead of
handing every line to a worker thread (the SDK's default, ~0.1 ms a hop on
this kind of machine, twice per response). Regular files and character
devices, which cannot be polled, and writes larger than one pipe buffer
still go through a worker thread.

The descriptors come from `server.stdio_front.claim()`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable

import anyio
import anyio.to_thread

from server.stdio_front import pollable, write_all

READ_CHUNK = 1 << 16
# Linux reports a pipe writable while one page slot is free: a write this small then never blocks.
INLINE_WRITE_MAX = 4096


class LineReader:
    """Async iterator of decoded lines from `fd`; replayed lines and bytes already read come first.

    `replay` holds (line, observe) pairs: lines the fast start read before the server was ready.
    `observe` is called with every line read from the wire (and replayed lines marked observe).
    """

    def __init__(
        self,
        fd: int,
        *,
        pending: bytes = b"",
        replay: Iterable[tuple[bytes, bool]] = (),
        observe: Callable[[bytes], None] | None = None,
    ) -> None:
        self._fd = fd
        self._buf = bytearray(pending)
        self._scan = 0
        self._replay = deque(replay)
        self._observe = observe
        self._pollable = pollable(fd)
        self._eof = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while True:
            line = await self.readline()
            if line is None:
                return
            yield line.decode("utf-8", "replace")

    async def readline(self) -> bytes | None:
        """The next line (with its newline), or None at end of input."""
        while self._replay:
            line, observe = self._replay.popleft()
            if observe and self._observe is not None:
                self._observe(line)
            return line
        while True:
            end = self._buf.find(b"\n", self._scan)
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                self._scan = 0
                break
            self._scan = len(self._buf)
            if self._eof:
                if not self._buf:
                    return None
                line = bytes(self._buf)
                self._buf.clear()
                self._scan = 0
                break
            chunk = await self._read()
            if chunk:
                self._buf += chunk
            else:
                self._eof = True
        if self._observe is not None:
            self._observe(line)
        return line

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
    """What the SDK writes responses to: `write(line)` then `flush()` (a no-op: nothing is buffered).

    `transform` sees each encoded line and returns what goes on the wire (the same bytes,
    other bytes, or nothing): the stdio fast start uses it to record and check its answers.
    """

    def __init__(self, fd: int, transform: Callable[[bytes], bytes | None] | None = None) -> None:
        self._fd = fd
        self._transform = transform
        self._pollable = pollable(fd)

    async def write(self, text: str) -> None:
        encoded = text.encode("utf-8")
        data = self._transform(encoded) if self._transform is not None else encoded
        if data:
            await self.write_bytes(data)

    async def write_bytes(self, data: bytes) -> None:
        if self._pollable and len(data) <= INLINE_WRITE_MAX:
            await anyio.wait_writable(self._fd)
            written = os.write(self._fd, data)
            if written == len(data):
                return
            data = data[written:]
        await anyio.to_thread.run_sync(write_all, self._fd, data)

    async def flush(self) -> None:
        return None
