"""What a hostile or careless HTTP client tries against the gateway, one coroutine per kind of try.

Each attack makes one or a few requests against `Target` and records every answer in its
`Tally` with the answers that would be right; anything else is counted as unexpected, and an
answer that lets one principal reach another's session as a cross-principal access.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2

from tests.support.hanging_upstream import HangingOllama
from tests.support.mcp_http import INITIALIZED, SseSession, headers, initialize_message, sse_session, tool_call

NETWORK_ERRORS = (httpx2.HTTPError, OSError, anyio.EndOfStream, anyio.BrokenResourceError)


@dataclass
class Tally:
    tries: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)  # kind -> one unexpected answer
    cross_principal: int = 0
    lockouts: int = 0  # a new session refused (503)
    held_open: int = 0  # slow headers or body not cut within the deadline (+ slack)
    dropped: int = 0
    released: int = 0  # dropped calls whose upstream request ended at once
    largest_error_reply: int = 0  # bytes in the largest answer to a malformed request

    def answer(self, kind: str, status: int | str, expected: set[int | str], size: int = 0) -> None:
        self.tries += 1
        self.by_kind[kind] += 1
        if status not in expected:
            self.unexpected[kind] += 1
            self.samples.setdefault(kind, str(status))
        if kind == "garbage":
            self.largest_error_reply = max(self.largest_error_reply, size)


@dataclass
class Target:
    base: str
    port: int
    transport: str
    tokens: dict[str, str]  # principal -> bearer token
    upstream: HangingOllama
    header_timeout_s: float
    body_timeout_s: float
    max_body_bytes: int
    http: httpx2.AsyncClient
    tally: Tally
    rng: random.Random
    alice_sessions: list[str] = field(default_factory=list)
    drop_lock: anyio.Lock = field(default_factory=anyio.Lock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(100))

    def next_id(self) -> int:
        """JSON-RPC ids unique per client, as the protocol wants for requests in flight on one session."""
        return next(self.ids)

    @property
    def url(self) -> str:
        return self.base + "/mcp"

    def auth(self, who: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[who]}"}


async def _get_status(t: Target, path: str, hdrs: dict[str, str]) -> int | str:
    """The status of a GET with these headers, or the network error's name (the body is never read)."""
    try:
        async with t.http.stream("GET", t.base + path, headers=hdrs, timeout=5) as r:
            return r.status_code
    except NETWORK_ERRORS as exc:
        return type(exc).__name__


async def bad_host(t: Target) -> None:
    host = t.rng.choice(
        [f"attacker.example:{t.port}", "127.0.0.1:x", f"127.0.0.1.attacker.example:{t.port}", "h" * 4000, "localhost"]
    )
    path = t.rng.choice(["/mcp" if t.transport != "sse" else "/sse", "/health", "/metrics"])
    status = await _get_status(t, path, {**headers(t.tokens["alice"]), "host": host})
    t.tally.answer("bad_host", status, {421, 400})


async def bad_origin(t: Target) -> None:
    origin = t.rng.choice(["http://attacker.example", "null", "http://127.0.0.1.attacker.example", "https://localhost"])
    path = t.rng.choice(["/health", "/metrics", "/mcp" if t.transport != "sse" else "/sse"])
    status = await _get_status(t, path, {**headers(t.tokens["alice"]), "origin": origin})
    t.tally.answer("bad_origin", status, {403})


async def no_token(t: Target) -> None:
    token = t.rng.choice([None, "wrong-token-123", "tok-alice" + "x" * 300])
    hdrs = headers(token)
    path = "/mcp" if t.transport != "sse" else "/messages/?session_id=" + "0" * 32
    r = await t.http.post(t.base + path, json=initialize_message(), headers=hdrs)
    t.tally.answer("no_token", r.status_code, {401})


async def open_session(t: Target, who: str) -> str | None:
    r = await t.http.post(t.url, json=initialize_message(), headers=headers(t.tokens[who]))
    t.tally.answer("open_session", r.status_code, {200, 503})
    if r.status_code == 503:
        t.tally.lockouts += 1
        return None
    sid = r.headers.get("mcp-session-id")
    if sid is not None:
        done = await t.http.post(
            t.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers(t.tokens[who], sid)
        )
        t.tally.answer("open_session", done.status_code, {202})
    return sid


async def alice_session(t: Target) -> str | None:
    if not t.alice_sessions or t.rng.random() < 0.05:
        sid = await open_session(t, "alice")
        if sid is not None:
            t.alice_sessions.append(sid)
            del t.alice_sessions[:-8]
    return t.rng.choice(t.alice_sessions) if t.alice_sessions else None


async def cross_principal(t: Target) -> None:
    sid = await alice_session(t)
    if sid is None:
        return
    spelled = t.rng.choice([sid, sid.upper()])
    verb = t.rng.choice(["call", "list", "get", "delete"])
    hdrs = headers(t.tokens["bob"], spelled)
    try:
        if verb == "get":
            async with t.http.stream("GET", t.url, headers=hdrs, timeout=5) as r:
                status: int | str = r.status_code
        elif verb == "delete":
            status = (await t.http.delete(t.url, headers=hdrs)).status_code
        else:
            message = (
                tool_call("embed", {"input": ["bob"]})
                if verb == "call"
                else {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
            )
            status = (await t.http.post(t.url, json=message, headers=hdrs)).status_code
    except NETWORK_ERRORS as exc:
        status = type(exc).__name__
    t.tally.answer("cross_principal", status, {404, 400})
    if status not in (404, 400) and isinstance(status, int):
        t.tally.cross_principal += 1


async def own_call(t: Target) -> None:
    sid = await alice_session(t)
    if sid is None:
        return
    r = await t.http.post(
        t.url,
        json=tool_call("embed", {"input": ["alice", "calls"]}, t.next_id()),
        headers=headers(t.tokens["alice"], sid),
    )
    ok = r.status_code == 200 and "result" in r.json() and not r.json()["result"].get("isError")
    if r.status_code == 404:  # evicted by her own session cap: open another next time
        t.alice_sessions[:] = [s for s in t.alice_sessions if s != sid]
    t.tally.answer("own_call", 200 if ok else r.status_code, {200, 404})


async def session_flood(t: Target) -> None:
    await open_session(t, "bob")  # never used again, never closed


async def oversized(t: Target) -> None:
    sid = await alice_session(t)
    hdrs = headers(t.tokens["alice"], sid)
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"pad":"' + b"x" * t.max_body_bytes + b'"}}'
    try:
        if t.rng.random() < 0.5:
            status: int | str = (await t.http.post(t.url, content=body, headers=hdrs)).status_code
        else:

            async def chunks() -> Any:
                for i in range(0, len(body), 64 * 1024):
                    yield body[i : i + 64 * 1024]

            status = (await t.http.post(t.url, content=chunks(), headers=hdrs)).status_code
    except NETWORK_ERRORS as exc:
        status = type(exc).__name__  # cut off mid-upload: refused all the same
    t.tally.answer("oversized", status, {413, "WriteError", "RemoteProtocolError", "ReadError"})


def _nested(depth: int) -> bytes:
    return b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


async def garbage(t: Target) -> None:
    sid = await alice_session(t) if t.rng.random() < 0.7 else None
    body = t.rng.choice(
        [
            b"{",
            b"[" * 5000,
            _nested(3000),
            b"\xff\xfe\x00garbage",
            json.dumps({"jsonrpc": "2.0", "id": t.next_id(), "method": "m" * 100_000}).encode(),
            json.dumps({"jsonrpc": "2.0", "id": float("nan"), "method": "ping"}).encode(),
            json.dumps({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}).encode(),
            json.dumps(tool_call("embed", {"input": ["x"] * 5000}, t.next_id())).encode(),
        ]
    )
    r = await t.http.post(t.url, content=body, headers=headers(t.tokens["alice"], sid))
    t.tally.answer("garbage", r.status_code, {200, 202, 400, 404, 413, 422}, size=len(r.content))


async def _raw(t: Target, payload: bytes, drip_s: float, deadline_s: float) -> bool:
    """Send `payload` (one byte every `drip_s` when set) and report whether the server cut us off in time."""
    try:
        with anyio.fail_after(deadline_s):
            async with await anyio.connect_tcp("127.0.0.1", t.port) as stream:
                for i in range(0, len(payload), 1 if drip_s else len(payload)):
                    await stream.send(payload[i : i + (1 if drip_s else len(payload))])
                    if drip_s:
                        await anyio.sleep(drip_s)
                while True:
                    data = await stream.receive()
                    if data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.1 4"):
                        return True
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
        return True
    except TimeoutError:
        return False


async def slowloris(t: Target) -> None:
    head = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{t.port}\r\nX-Pad: {'a' * 400}\r\n\r\n".encode()
    cut = await _raw(t, head, 0.05, t.header_timeout_s + 3)
    t.tally.answer("slowloris", "cut" if cut else "held", {"cut"})
    t.tally.held_open += 0 if cut else 1


async def slow_body(t: Target) -> None:
    fields = "".join(f"{k}: {v}\r\n" for k, v in {**headers(t.tokens["alice"])}.items())
    head = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{t.port}\r\n{fields}Content-Length: 400\r\n\r\n".encode()
    cut = await _raw(t, head + b'{"jsonrpc":', 0, t.body_timeout_s + 3)
    t.tally.answer("slow_body", "cut" if cut else "held", {"cut"})
    t.tally.held_open += 0 if cut else 1


async def dropped_call(t: Target) -> None:
    """A call whose client hangs up while the upstream works on it: the upstream must see it end at once."""
    async with t.drop_lock:
        sid = await alice_session(t)
        if sid is None:
            return
        up = t.upstream
        entered, released = up.entered_count, up.released_count
        chat = {"messages": [{"role": "user", "content": "please HANG-HERE"}], "max_tokens": 4}
        message = tool_call("chat", chat, t.next_id())
        async with httpx2.AsyncClient(timeout=30) as own, anyio.create_task_group() as tg:
            tg.start_soon(lambda: own.post(t.url, json=message, headers=headers(t.tokens["alice"], sid)))
            await anyio.to_thread.run_sync(up.wait_entered, entered, 5.0)
            tg.cancel_scope.cancel()
        t.tally.dropped += 1
        gone = await anyio.to_thread.run_sync(up.wait_released, released, 5.0)
        t.tally.released += 1 if gone else 0
        t.tally.answer("dropped_call", "released" if gone else "kept", {"released"})


async def sse_cross(t: Target, alice_sid: str) -> None:
    spelled = t.rng.choice(
        [
            alice_sid,
            alice_sid.upper(),
            f"{alice_sid[:8]}-{alice_sid[8:12]}-{alice_sid[12:16]}-{alice_sid[16:20]}-{alice_sid[20:]}",
        ]
    )
    r = await t.http.post(
        f"{t.base}/messages/?session_id={spelled}",
        json=tool_call("embed", {"input": ["bob"]}, 77),
        headers=headers(t.tokens["bob"]),
    )
    t.tally.answer("sse_cross", r.status_code, {404})
    if r.status_code != 404:
        t.tally.cross_principal += 1


async def sse_flood(t: Target) -> None:
    hdrs = {"accept": "text/event-stream", **t.auth("bob")}
    try:
        async with t.http.stream("GET", t.base + "/sse", headers=hdrs, timeout=5) as r:
            status: int | str = r.status_code
            async for _ in r.aiter_lines():
                break
    except NETWORK_ERRORS as exc:
        status = type(exc).__name__
    t.tally.answer("sse_flood", status, {200})
    t.tally.lockouts += 1 if status == 503 else 0


@asynccontextmanager
async def sse_client(t: Target) -> AsyncIterator[SseSession]:
    """Alice's legacy SSE session, initialized, its stream read in the background."""
    timeout = httpx2.Timeout(10, read=None)  # the stream is quiet between messages
    async with httpx2.AsyncClient(timeout=timeout) as own, sse_session(own, t.base, t.tokens["alice"]) as session:
        alice = headers(t.tokens["alice"])
        await own.post(session.endpoint, json=initialize_message(1), headers=alice)
        await session.wait_for(1)
        await own.post(session.endpoint, json=INITIALIZED, headers=alice)
        yield session
