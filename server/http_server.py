"""The HTTP server under the ASGI app: uvicorn, with a deadline on request headers and a bounded shutdown.

uvicorn closes idle keep-alive connections but lets a client take as long as it likes to send
request headers: one byte every few seconds holds a connection (and its slot) forever, and a
connection that sends nothing is never closed. `HeaderDeadlineProtocol` gives each request's
headers `header_timeout_s` from the moment the connection opens or the first byte of the next
request arrives; past it the connection is closed. Headers are parsed here, below ASGI, so no
ASGI layer could see this. It also tells a request that its client has gone
(`RequestState.client_left`) the moment the connection drops, so no task per request has to
wait on the connection to notice.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.config import Settings
from server.http_guard import REQUEST_KEY, RequestState

log = logging.getLogger("model_gateway.http")


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections whose request headers are not in on time."""

    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: Any = None  # the event loop's timer handle (uvicorn's loop; the gateway never names it)
        self._awaiting_headers = True
        self._seen_cycle: object | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is held to the same deadline

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers and self._header_timer is None:
            self._arm()
        super().data_received(data)
        self._note_cycle()

    def on_response_complete(self) -> None:
        self._awaiting_headers = True  # set first: a pipelined request may start inside the call below
        super().on_response_complete()
        self._note_cycle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            state = cycle.scope.get(REQUEST_KEY)
            if isinstance(state, RequestState):
                state.client_left()  # the request's call is cancelled now, not at its deadline

    def _note_cycle(self) -> None:
        """A new request cycle means its headers are complete."""
        if self.cycle is not None and self.cycle is not self._seen_cycle:
            self._seen_cycle = self.cycle
            self._awaiting_headers = False
            self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            log.info("closed a connection whose request headers did not arrive within %.0f s", self.header_timeout_s)
            self.transport.close()


def protocol_with(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class with this deadline (uvicorn instantiates the class per connection)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})


def uvicorn_config(
    settings: Settings, app: ASGIApp, *, port: int | None = None, lifespan: bool = True
) -> uvicorn.Config:
    """uvicorn for `app` with the front door's bounds; `port` (on 127.0.0.1) for a listener of its own."""
    front = settings.manifests.performance.http_server
    return uvicorn.Config(
        app,
        host=settings.host if port is None else "127.0.0.1",
        port=settings.port if port is None else port,
        log_level="warning",
        lifespan="on" if lifespan else "off",
        http=protocol_with(front.header_timeout_s),
        ws="none",  # the gateway serves no WebSocket: an upgrade is not taken
        timeout_graceful_shutdown=math.ceil(front.shutdown_grace_s),
    )
