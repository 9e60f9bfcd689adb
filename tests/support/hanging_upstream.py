"""A loopback Ollama whose model calls hang until the caller hangs up, and which notices when it does."""

from __future__ import annotations

import asyncio
import json
import threading

from tests.support.fake_ollama import FakeOllama
from tests.support.http1 import Request


class HangingOllama(FakeOllama):
    """`/api/embed` and `/api/chat` wait up to `hold_s` for the client to close the connection.

    With `marker`, only requests whose body contains it hang; the others are answered at once.
    `entered` is set when a request starts hanging, `released` when its client closed the
    connection while it was held (what a gateway that cancels its call does at once); the
    counters say how many of each so far.
    """

    def __init__(self, hold_s: float = 60.0, marker: str | None = None) -> None:
        super().__init__()
        self.hold_s = hold_s
        self.marker = marker
        self.entered = threading.Event()
        self.released = threading.Event()
        self.entered_count = 0
        self.released_count = 0
        self._changed = threading.Condition()
        self._readers: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._readers[writer] = reader
        try:
            await super()._connection(reader, writer)
        finally:
            self._readers.pop(writer, None)

    def _hangs(self, req: Request) -> bool:
        if req.path not in ("/api/embed", "/api/chat"):
            return False
        return self.marker is None or self.marker in json.dumps(req.body)

    async def respond(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        if not self._hangs(req):
            return await super().respond(req, writer)
        with self._changed:
            self.entered_count += 1
            self.entered.set()
            self._changed.notify_all()
        try:
            got = await asyncio.wait_for(self._readers[writer].read(1), self.hold_s)
        except TimeoutError:
            return await super().respond(req, writer)
        if got == b"":
            with self._changed:
                self.released_count += 1
                self.released.set()
                self._changed.notify_all()
        return False

    def wait_entered(self, above: int, timeout_s: float) -> bool:
        """Block until more than `above` requests have started hanging (False after `timeout_s`)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.entered_count > above, timeout_s)

    def wait_released(self, above: int, timeout_s: float) -> bool:
        """Block until more than `above` held requests were closed by their client (False after `timeout_s`)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.released_count > above, timeout_s)
