"""After the handover: record the server's handshake answers, and check the ones the cache gave early.

`inbound` sees each client request once it is parsed (nothing is parsed again here); the
writer asks `watching(id)` for each response it writes and, for the few that are watched,
hands over the response's result. Private verification answers are dropped from the wire.

When an answer given early differs from the server's real one, the client is corrected in
the same session: the server declares `listChanged` for tools, resources and prompts in
every `initialize` answer, so the matching `notifications/<list>/list_changed` can always be
sent, and the host asks for the list again. A 2026-era client hears of changes only on the
`subscriptions/listen` streams it opens: the change is published there (`to_publish`), and
its next request for the list gets the real answer either way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from server.envelope import Request, RequestId, encode
from server.stdio.handshake import CACHEABLE, LISTS, HandshakeCache, key, meta_version, well_formed


def _log() -> Any:
    import logging  # only when there is something to say: the fast start imports nothing it can avoid

    return logging.getLogger("model_gateway.stdio")


class Expected(NamedTuple):
    cache_key: str | None  # None: a list asked for before `initialize` was answered; keyed by its answer
    method: str
    drop: bool  # a private verification request: its answer never reaches the client
    given: Any = None  # the answer the cache already gave, if any
    modern: bool = False  # a 2026-era request (it carried its protocol version in `_meta`)


class Recorder:
    def __init__(
        self, cache: HandshakeCache, negotiated: str | None = None, list_changed: frozenset[str] = frozenset()
    ) -> None:
        self.cache = cache
        self.negotiated = negotiated  # legacy: the protocol version `initialize` settled on
        self.list_changed = list_changed  # capabilities the client was told may change
        self.pending: dict[RequestId, Expected] = {}
        self.changed: list[str] = []
        self.dirty = False  # the cache has answers not yet saved
        self.to_publish: list[str] = []  # 2026-era lists that changed: for `subscriptions/listen` streams

    def expect(
        self, request_id: RequestId, cache_key: str, *, drop: bool, given: Any = None, modern: bool = False
    ) -> None:
        self.pending[request_id] = Expected(cache_key, cache_key.split("|", 1)[0], drop, given, modern)

    def inbound(self, request: Request) -> None:
        method, params = request.method, request.message.get("params")
        if method not in CACHEABLE:
            return
        if method in LISTS and isinstance(params, dict) and params.get("cursor") is not None:
            return  # a later page: only the first is kept
        if method == "initialize":
            requested = params.get("protocolVersion") if isinstance(params, dict) else None
            version = requested if isinstance(requested, str) else None
        else:
            version = meta_version(params) or self.negotiated
        cache_key = key(method, version) if version else None
        self.pending[request.id] = Expected(cache_key, method, False, None, meta_version(params) is not None)

    def watching(self, request_id: object) -> bool:
        return bool(self.pending) and isinstance(request_id, str | int) and request_id in self.pending

    def outbound(self, request_id: RequestId, result: object) -> tuple[bool, bytes]:
        """(send the response?, bytes to send after it) for a watched response; `result` None for an error."""
        expected = self.pending.pop(request_id)
        method, extra = expected.method, b""
        if method == "initialize" and isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
            self.negotiated = result["protocolVersion"]
        # pipelined: a list asked for right after `initialize` is answered after it, so the version is known now
        cache_key = expected.cache_key or (key(method, self.negotiated) if self.negotiated else None)
        if isinstance(result, dict) and cache_key is not None:
            if well_formed(method, result) and self.cache.answers.get(cache_key) != result:
                self.cache.answers[cache_key] = result
                self.dirty = True
            if expected.given is not None and expected.given != result:
                extra = self._stale(cache_key, method, expected.modern)
        return not expected.drop, extra

    def _stale(self, cache_key: str, method: str, modern: bool) -> bytes:
        self.changed.append(cache_key)
        capability = LISTS[method][0] if method in LISTS else None
        if capability is not None and modern:
            _log().warning("the cached answer to %s was stale: published to the client's listen streams", cache_key)
            self.to_publish.append(capability)
            return b""
        if capability is not None and capability in self.list_changed:
            _log().warning("the cached answer to %s was stale: the client is told the list changed", cache_key)
            return encode({"jsonrpc": "2.0", "method": f"notifications/{capability}/list_changed"})
        _log().warning("the cached answer to %s was stale; the cache is rewritten", cache_key)
        return b""
