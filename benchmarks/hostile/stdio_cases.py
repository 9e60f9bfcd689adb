"""Hostile stdio lines, generated from a seed: broken and deeply nested JSON, invalid UTF-8, odd ids,
long names, batches, stray responses, huge lines and the limits plus or minus one.

A `Case` is one line (or several, for floods) and the id of the request in it whose answer is
owed (None when JSON-RPC owes none: notifications, unparsable lines, invalid ids).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any

DEFAULT_LINE_CAP = 16 * 1024 * 1024
NAME_CAP = 128  # method and tool names
DEPTH_CAP = 200
MAX_TEXTS = 2048
MAX_TEXT_CHARS = 32768
HANDSHAKE = ("initialize", "tools/list", "resources/list", "prompts/list", "server/discover")


@dataclass(frozen=True)
class Case:
    kind: str
    data: bytes
    owed: Any = None  # the id an answer is owed to


def rpc(**msg: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **msg}, separators=(",", ":")).encode() + b"\n"


class Cases:
    """Every generator draws from one seeded `random.Random`, so a seed replays the same traffic."""

    def __init__(self, seed: int, line_cap: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.line_cap = line_cap or DEFAULT_LINE_CAP
        self._ids = count(1)

    def next_id(self) -> str:
        return f"h-{next(self._ids)}"

    def valid(self) -> bytes:
        """A well-formed request of a random kind, as the base for mutations."""
        rid = self.next_id()
        choice = self.rng.randrange(4)
        if choice == 0:
            return rpc(id=rid, method="ping")
        if choice == 1:
            return rpc(id=rid, method="tools/list", params={})
        if choice == 2:
            return rpc(id=rid, method="tools/call", params={"name": "embed", "arguments": {"input": "hello"}})
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "h", "version": "0"}}
        return rpc(id=rid, method="initialize", params=params)

    # --- generators: each yields cases of one family ---------------------------------------------

    def broken_json(self) -> Iterator[Case]:
        line = self.valid()
        cut = self.rng.randrange(1, len(line) - 1)
        yield Case("broken", line[:cut] + b"\n")
        garbage = bytes(self.rng.randrange(32, 127) for _ in range(self.rng.randrange(1, 200)))
        yield Case("broken", garbage.replace(b"\n", b" ") + b"\n")
        yield Case(
            "broken",
            self.rng.choice([b"{", b"}", b"]", b"[", b'"', b"nul", b"{}", b"[]", b"null", b"1", b'"x"']) + b"\n",
        )
        yield Case("broken", b'{"jsonrpc":"2.0","id":1,"method":"ping",}\n')
        yield Case("broken", b"\x00\x01\x02" + line)

    def nesting(self) -> Iterator[Case]:
        depth = self.rng.choice([DEPTH_CAP - 2, DEPTH_CAP - 1, DEPTH_CAP, DEPTH_CAP + 1, DEPTH_CAP + 2, 1000, 2000])
        method = self.rng.choice(HANDSHAKE)
        rid = self.next_id()
        nested = "[" * depth + "]" * depth
        # a handshake method name in the first bytes, the nesting inside the arguments
        yield Case(
            "nesting", f'{{"jsonrpc":"2.0","id":"{rid}","method":"{method}","params":{{"x":{nested}}}}}\n'.encode(), rid
        )
        yield Case("nesting", b"[" * self.rng.choice([2048, 100_000]) + b"\n")
        obj = '{"a":' * depth + "1" + "}" * depth
        yield Case("nesting", f'{{"jsonrpc":"2.0","method":"notifications/initialized","params":{obj}}}\n'.encode())

    def bad_utf8(self) -> Iterator[Case]:
        rid = self.next_id()
        bad = self.rng.choice(
            [b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"]
        )
        yield Case(
            "utf8", b'{"jsonrpc":"2.0","id":"' + rid.encode() + b'","method":"ping","params":{"x":"' + bad + b'"}}\n'
        )
        yield Case("utf8", b'{"jsonrpc":"2.0","id":"' + self.next_id().encode() + bad + b'","method":"ping"}\n')
        # a lone surrogate escape is not text, so not JSON: a parse error, owed to no id
        lone = rpc(id=self.next_id(), method="tools/call", params={"name": "embed", "arguments": {"input": "\ud800"}})
        yield Case("utf8", lone)
        yield Case("utf8", b'{"jsonrpc":"2.0","id":"' + self.next_id().encode() + b'","method":"pi' + bad + b'ng"}\n')

    def odd_ids(self) -> Iterator[Case]:
        method = self.rng.choice(["ping", "tools/list", "initialize", "resources/list", "nope"])
        odd = self.rng.choice(
            [
                "1.5",
                "1.0",
                "-0.0",
                "NaN",
                "Infinity",
                "-Infinity",
                "1e400",
                "true",
                "false",
                "null",
                "{}",
                "[]",
                '{"a":1}',
                "[1]",
                str(2**64),
                "1" * 500,
                '"' + "i" * 10_000 + '"',
            ]
        )
        yield Case("ids", f'{{"jsonrpc":"2.0","id":{odd},"method":"{method}"}}\n'.encode())
        fine = self.rng.choice([0, -1, 2**53, "", "x" * 100])
        yield Case("ids", rpc(id=fine, method="ping"), fine)

    def names(self) -> Iterator[Case]:
        length = self.rng.choice([NAME_CAP - 1, NAME_CAP, NAME_CAP + 1, 4096, 1 << 20])
        rid = self.next_id()
        yield Case("names", rpc(id=rid, method="m" * length), rid)
        rid = self.next_id()
        yield Case("names", rpc(id=rid, method="tools/call", params={"name": "t" * length, "arguments": {}}), rid)
        rid = self.next_id()
        yield Case("names", rpc(id=rid, method="resources/read", params={"uri": "gateway://" + "u" * length}), rid)
        rid = self.next_id()
        yield Case("names", rpc(id=rid, method="prompts/get", params={"name": "p" * length}), rid)
        yield Case("names", rpc(method="notifications/" + "n" * length))

    def batches(self) -> Iterator[Case]:
        size = self.rng.choice([0, 1, 2, 10, 5000])
        items = [{"jsonrpc": "2.0", "id": self.next_id(), "method": "ping"} for _ in range(size)]
        yield Case("batch", json.dumps(items).encode() + b"\n")
        yield Case("batch", b'[{"jsonrpc":"2.0","method":"notifications/initialized"},1,"x",[]]\n')

    def notifications(self) -> Iterator[Case]:
        yield Case("notify", rpc(method="notifications/cancelled", params={"requestId": self.next_id()}))
        yield Case("notify", rpc(method="notifications/progress", params={"progressToken": [1], "progress": "x"}))
        yield Case("notify", rpc(method="notifications/initialized"))
        yield Case("notify", rpc(method="notifications/unknown", params={"x": [1] * 100}))
        yield Case("notify", rpc(method="ping"))  # a request without an id is a notification

    def stray_responses(self) -> Iterator[Case]:
        yield Case("response", rpc(id=self.next_id(), result={}))
        yield Case("response", rpc(id=self.next_id(), error={"code": -1, "message": "x" * 1000}))
        yield Case("response", rpc(id=None, error={"code": 1}))
        yield Case("response", rpc(id=1, result={}, error={"code": 1, "message": "both"}))

    def tool_limits(self) -> Iterator[Case]:
        # At the limit the answer holds 2,048 vectors, asked for at 8 dimensions: the full 384 make ~6 MB
        # of JSON (8 MB as base64), and building and writing that answer is legitimate work that holds
        # the event loop ~100 ms on this machine. The campaign is about hostile input, not that.
        n = self.rng.choice([MAX_TEXTS, MAX_TEXTS + 1])
        rid = self.next_id()
        arguments = {"input": ["t"] * n, "dimensions": 8}
        yield Case("limits", rpc(id=rid, method="tools/call", params={"name": "embed", "arguments": arguments}), rid)
        chars = self.rng.choice([MAX_TEXT_CHARS, MAX_TEXT_CHARS + 1])
        rid = self.next_id()
        yield Case(
            "limits",
            rpc(id=rid, method="tools/call", params={"name": "embed", "arguments": {"input": "c" * chars}}),
            rid,
        )

    def huge_lines(self) -> Iterator[Case]:
        """Messages of cap - 1, cap and cap + 1 bytes (the newline not counted), of two shapes, and one far over."""
        for size in (self.line_cap - 1, self.line_cap, self.line_cap + 1):
            rid = self.next_id()
            yield Case("huge", _sized_string_call(rid, size), rid if size <= self.line_cap else None)
            rid = self.next_id()
            yield Case("huge", _sized_tiny_texts(rid, size), rid if size <= self.line_cap else None)
        yield Case("huge", b" " * (self.line_cap + 1) + b"\n")
        yield Case("huge", _sized_tiny_texts(self.next_id(), 2 * self.line_cap))

    def floods(self, n: int) -> Iterator[Case]:
        """`n` pings, tools/list and garbage lines written as one block each."""
        ids = [self.next_id() for _ in range(n)]
        yield Case("flood", b"".join(rpc(id=i, method="ping") for i in ids), None)
        lists = [self.next_id() for _ in range(n // 2)]
        yield Case("flood", b"".join(rpc(id=i, method="tools/list") for i in lists), None)
        yield Case("flood", b"not json at all\n" * (n // 2), None)

    def families(self) -> list[Callable[[], Iterator[Case]]]:
        return [
            self.broken_json,
            self.nesting,
            self.bad_utf8,
            self.odd_ids,
            self.names,
            self.batches,
            self.notifications,
            self.stray_responses,
            self.tool_limits,
        ]


def flood_messages(case: Case) -> int:
    return case.data.count(b"\n")


def _sized_string_call(rid: str, size: int) -> bytes:
    """A tools/call of exactly `size` bytes (plus its newline): one long text."""
    head = rpc(id=rid, method="tools/call", params={"name": "embed", "arguments": {"input": ""}})
    pad = size - (len(head) - 1)
    return head.replace(b'"input":""', b'"input":"' + b"a" * pad + b'"') if pad > 0 else head


def _sized_tiny_texts(rid: str, size: int) -> bytes:
    """A tools/call of many one-character texts, padded to exactly `size` bytes (plus its newline)."""
    head = f'{{"jsonrpc":"2.0","id":"{rid}","method":"tools/call","params":{{"name":"embed","arguments":{{"input":['
    tail = '"a"]}}}\n'
    room = size - len(head) - (len(tail) - 1)
    items, rest = divmod(room, 4)
    body = '"a",' * items + " " * rest
    return (head + body + tail).encode()
