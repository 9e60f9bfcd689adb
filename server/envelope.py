"""JSON-RPC 2.0 envelopes as MCP uses them: what a parsed message is, or the error it earns.

Transport-neutral (stdio uses it; the HTTP edge can): input is the value `server.jsonparse`
produced, output is a `Request`, `Notification`, `Reply` (a client's answer to a server
request) or `Rejected` carrying the JSON-RPC error owed, if any. The rules:

- `jsonrpc` is "2.0"; a request's id is a string of at most `MAX_ID_CHARS` characters or an
  integer in the signed 64-bit range (MCP forbids null; JSON-RPC discourages fractions:
  floats, booleans, objects and arrays are refused, with id null since the id is unusable);
- a method name is at most `MAX_NAME_CHARS` characters, and so is the tool or prompt name a
  request carries; a resource URI at most `MAX_URI_CHARS`;
- params, where present, are an object;
- a batch (an array) is answered as JSON-RPC says, element by element, with an error for each
  request: MCP carries one message per line (batches left the protocol in 2025-06-18). A
  batch of more than `MAX_BATCH` elements, or an empty one, gets one error.

Errors name the rule and the limit; none repeats what the client sent beyond its id.
Standard library only, and records are NamedTuples rather than dataclasses: the stdio fast
start uses this before the SDK is imported, where every millisecond of import counts.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

MAX_NAME_CHARS = 128
MAX_ID_CHARS = 256
MAX_URI_CHARS = 4096
MAX_BATCH = 64
INT_ID_LIMIT = 2**63

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
SERVER_BUSY = -32000  # implementation-defined band: refused for load or shutdown, safe to retry

RequestId = str | int
# (params key, limit) checked for these methods before anything else reads them
_NAMED_PARAMS = {
    "tools/call": ("name", MAX_NAME_CHARS),
    "prompts/get": ("name", MAX_NAME_CHARS),
    "resources/read": ("uri", MAX_URI_CHARS),
    "resources/subscribe": ("uri", MAX_URI_CHARS),
    "resources/unsubscribe": ("uri", MAX_URI_CHARS),
}
# an id in the first bytes of a line too long to parse: only where nothing but "jsonrpc" precedes it,
# so the match is a top-level member
_HEAD_ID = (  # compiled on first use (`re` caches it)
    rb'^[ \t\r]*\{[ \t\r]*(?:"jsonrpc"[ \t\r]*:[ \t\r]*"2\.0"[ \t\r]*,[ \t\r]*)?"id"[ \t\r]*:[ \t\r]*'
    rb'(-?[0-9]{1,19}|"[^"\\\x00-\x1f]{0,256}")[ \t\r]*[,}]'
)


class Request(NamedTuple):
    id: RequestId
    method: str
    message: dict[str, Any]  # the whole parsed message, as it goes on to the server


class Notification(NamedTuple):
    method: str
    message: dict[str, Any]


class Reply(NamedTuple):
    """A client's result or error for a request the server sent it."""

    id: RequestId | None
    message: dict[str, Any]


class Rejected(NamedTuple):
    reason: str  # for logs: names the rule, never the content
    error: dict[str, Any] | None = None  # the JSON-RPC error response owed; None where none is


Message = Request | Notification | Reply
Outcome = Message | Rejected


def error_response(request_id: RequestId | None, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def encode(response: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    """One JSON-RPC response (or batch of them) as a compact line."""
    return json.dumps(response, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def parse_failed(reason: str, *, limit: bool = False, head: bytes = b"") -> Rejected:
    """Broken JSON earns a parse error (id null: nothing in it can be trusted); a well-formed message that
    breaks a parser limit is an invalid request, answered under its id where the first bytes show it."""
    if limit:
        return Rejected(reason, error_response(head_id(head), INVALID_REQUEST, f"Invalid request: {reason}"))
    return Rejected(reason, error_response(None, PARSE_ERROR, f"Parse error: {reason}"))


def head_id(head: bytes) -> RequestId | None:
    """The id of a message too large to parse, where its first bytes show it as a top-level member."""
    m = re.match(_HEAD_ID, head)
    request_id = json.loads(m.group(1)) if m is not None else None
    return request_id if valid_id(request_id) else None


def too_long(size: int, limit: int, head: bytes, setting: str) -> Rejected:
    """A message over the size limit, answered under the id its first bytes show, if any."""
    request_id = head_id(head)
    reason = f"a message of more than {limit} bytes ({setting})"
    return Rejected(reason, error_response(request_id, INVALID_REQUEST, f"Invalid request: {reason}"))


def valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -INT_ID_LIMIT < value < INT_ID_LIMIT
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS


def classify(value: object) -> Outcome | list[Outcome]:
    """What a parsed value is; a batch becomes one outcome per element (see `batch_errors`)."""
    if isinstance(value, list):
        if not value or len(value) > MAX_BATCH:
            reason = "an empty batch" if not value else f"a batch of more than {MAX_BATCH} messages"
            return Rejected(reason, error_response(None, INVALID_REQUEST, f"Invalid request: {reason}"))
        return [_classify_one(item) for item in value]
    return _classify_one(value)


def _invalid(request_id: RequestId | None, reason: str) -> Rejected:
    return Rejected(reason, error_response(request_id, INVALID_REQUEST, f"Invalid request: {reason}"))


def _classify_one(msg: object) -> Outcome:
    if not isinstance(msg, dict):
        return _invalid(None, "a message must be a JSON object")
    request_id = msg.get("id")
    usable_id = request_id if valid_id(request_id) else None
    if msg.get("jsonrpc") != "2.0":
        return _invalid(usable_id, 'a message must carry "jsonrpc": "2.0"')
    if "method" not in msg:
        return _reply(msg, "id" in msg, request_id)
    method = msg["method"]
    if not isinstance(method, str) or not method:
        return _invalid(usable_id, "the method must be a non-empty string")
    if len(method) > MAX_NAME_CHARS:
        return _invalid(usable_id, f"a method name longer than {MAX_NAME_CHARS} characters")
    params = msg.get("params")
    if "id" not in msg:
        if params is not None and not isinstance(params, dict):
            return Rejected("a notification whose params are not an object")
        return Notification(method, msg)
    if usable_id is None:
        what = "null" if request_id is None else type(request_id).__name__
        return _invalid(
            None, f"a request id must be a string (up to {MAX_ID_CHARS} characters) or an integer, not {what}"
        )
    return _request(usable_id, method, params, msg)


def _request(request_id: RequestId, method: str, params: object, msg: dict[str, Any]) -> Outcome:
    if params is not None and not isinstance(params, dict):
        return _bad_params(request_id, "params must be an object")
    named = _NAMED_PARAMS.get(method)
    if named is not None and isinstance(params, dict):
        key, limit = named
        value = params.get(key)
        if isinstance(value, str) and len(value) > limit:
            return _bad_params(request_id, f"a {key} longer than {limit} characters")
    return Request(request_id, method, msg)


def _bad_params(request_id: RequestId, reason: str) -> Rejected:
    return Rejected(reason, error_response(request_id, INVALID_PARAMS, f"Invalid params: {reason}"))


def _reply(msg: dict[str, Any], has_id: bool, request_id: object) -> Outcome:
    """A message without a method: the client's answer to one of ours. Never answered back."""
    if not has_id or not (request_id is None or valid_id(request_id)):
        return Rejected("a response without a usable id")
    if ("result" in msg) == ("error" in msg):
        return Rejected("a response must carry exactly one of result and error")
    if "result" in msg and (request_id is None or not isinstance(msg["result"], dict)):
        return Rejected("a result must be an object answering a request id")
    if "error" in msg and not _error_shape(msg["error"]):
        return Rejected("an error must be an object with an integer code and a string message")
    assert request_id is None or isinstance(request_id, str | int)
    return Reply(request_id, msg)


def _error_shape(error: object) -> bool:
    return (
        isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and not isinstance(error.get("code"), bool)
        and isinstance(error.get("message"), str)
    )


def batch_errors(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """The answer to a batch: an error per request (none for notifications and replies)."""
    answers = []
    for outcome in outcomes:
        if isinstance(outcome, Request):
            reason = "batches are not supported; send each message on its own line"
            answers.append(error_response(outcome.id, INVALID_REQUEST, f"Invalid request: {reason}"))
        elif isinstance(outcome, Rejected) and outcome.error is not None:
            answers.append(outcome.error)
    return answers


def refusal(request_id: RequestId, reason: str) -> dict[str, Any]:
    """A request turned away for load or shutdown: nothing was done, it may be sent again."""
    return error_response(request_id, SERVER_BUSY, reason)
