"""A loopback Ollama whose model calls hang until the caller hangs up, and which notices when it does."""

from __future__ import annotations

import asyncio
import threading

from tests.support.fake_ollama import FakeOllama
from tests.support.http1 import Request


class HangingOllama(FakeOllama):
    """`/api/embed` and `/api/chat` wait up to `hold_s` for the client to close the connection.

    `entered` is set when such a request arrives, `released` when its client closed the
    connection while it was held (what a gateway that cancels its call does at once).
    """

    def __init__(self, hold_s: float = 60.0) -> None:
        super().__init__()
        self.hold_s = hold_s
        self.entered = threading.Event()
        self.released = threading.Event()
        self._readers: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._readers[writer] = reader
        try:
            await super()._connection(reader, writer)
        finally:
            self._readers.pop(writer, None)

    async def respond(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        if req.path not in ("/api/embed", "/api/chat"):
            return await super().respond(req, writer)
        self.entered.set()
        try:
            got = await asyncio.wait_for(self._readers[writer].read(1), self.hold_s)
        except TimeoutError:
            return await super().respond(req, writer)
        if got == b"":
            self.released.set()
        return False
