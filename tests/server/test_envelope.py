"""JSON-RPC envelopes: what a parsed message is, and the JSON-RPC answer each kind of bad one gets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.envelope import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_BATCH,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    Notification,
    Rejected,
    Reply,
    Request,
    batch_errors,
    classify,
    encode,
    head_id,
    parse_failed,
    too_long,
)


def msg(**fields: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", **fields}


def rejected(value: object) -> Rejected:
    outcome = classify(value)
    assert isinstance(outcome, Rejected), outcome
    return outcome


@pytest.mark.parametrize("good", ["a", "", "x" * MAX_ID_CHARS, 0, -1, 2**63 - 1, -(2**63) + 1])
def test_string_and_integer_ids_make_requests(good: object) -> None:
    outcome = classify(msg(id=good, method="ping"))
    assert isinstance(outcome, Request) and outcome.id == good


@pytest.mark.parametrize("bad", [1.5, 1.0, True, False, None, {}, [], [1], "x" * (MAX_ID_CHARS + 1), 2**63, 10**400])
def test_other_ids_are_invalid_requests_answered_with_id_null(bad: object) -> None:
    error = rejected(msg(id=bad, method="ping")).error
    assert error is not None and error["id"] is None and error["error"]["code"] == INVALID_REQUEST
    assert len(encode(error)) < 300


def test_method_names_are_capped_and_the_answer_names_the_limit_not_the_name() -> None:
    assert isinstance(classify(msg(id=1, method="m" * MAX_NAME_CHARS)), Request)
    error = rejected(msg(id=1, method="m" * (MAX_NAME_CHARS + 1))).error
    assert error is not None and error["id"] == 1 and str(MAX_NAME_CHARS) in error["error"]["message"]
    huge = rejected(msg(id=2, method="m" * 50_000_000)).error
    assert huge is not None and len(encode(huge)) < 300


@pytest.mark.parametrize(
    ("method", "key"), [("tools/call", "name"), ("prompts/get", "name"), ("resources/read", "uri")]
)
def test_tool_prompt_and_resource_names_are_capped_at_the_envelope(method: str, key: str) -> None:
    limit = MAX_NAME_CHARS if key == "name" else 4096
    assert isinstance(classify(msg(id=1, method=method, params={key: "n" * limit})), Request)
    error = rejected(msg(id=1, method=method, params={key: "n" * (limit + 1)})).error
    assert error is not None and error["error"]["code"] == INVALID_PARAMS and "n" * 20 not in json.dumps(error)


def test_envelope_faults_earn_invalid_request_with_the_id_when_it_is_usable() -> None:
    for value, request_id in [
        ({"id": 1, "method": "ping"}, 1),  # no jsonrpc
        (msg(id=2, method=5), 2),
        (msg(id=3, method=""), 3),
        ("just a string", None),
        (7, None),
    ]:
        error = rejected(value).error
        assert error is not None and error["id"] == request_id and error["error"]["code"] == INVALID_REQUEST
    params = rejected(msg(id=4, method="tools/list", params=[1])).error
    assert params is not None and params["error"]["code"] == INVALID_PARAMS


def test_notifications_are_never_answered_even_when_wrong() -> None:
    assert isinstance(classify(msg(method="notifications/initialized")), Notification)
    assert rejected(msg(method="notifications/x", params=[1])).error is None


def test_client_replies_are_passed_on_or_dropped_never_answered() -> None:
    assert isinstance(classify(msg(id=5, result={})), Reply)
    assert isinstance(classify(msg(id=None, error={"code": 1, "message": "m"})), Reply)
    for bad in [
        msg(id=5, result=[]),
        msg(id=5),
        msg(id=5, result={}, error={"code": 1, "message": "m"}),
        msg(id=5, error={"code": "x"}),
        msg(result={}),
        msg(id=1.5, result={}),
    ]:
        assert rejected(bad).error is None


def test_batches_get_an_error_per_request_and_one_error_when_empty_or_too_long() -> None:
    outcomes = classify([msg(id=1, method="ping"), msg(method="notifications/initialized"), 5, msg(id=2, result={})])
    assert isinstance(outcomes, list)
    answers = batch_errors(outcomes)
    assert [(a["id"], a["error"]["code"]) for a in answers] == [(1, INVALID_REQUEST), (None, INVALID_REQUEST)]
    assert batch_errors(classify([msg(method="notifications/initialized")])) == []  # type: ignore[arg-type]
    for value in ([], [msg(id=n, method="ping") for n in range(MAX_BATCH + 1)]):
        error = rejected(value).error
        assert error is not None and error["id"] is None


def test_an_over_long_message_is_answered_under_the_id_its_first_bytes_show_at_top_level_only() -> None:
    assert head_id(b'{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{') == 42
    assert head_id(b'{"id":"abc","jsonrpc":"2.0"') == "abc"
    assert head_id(b'{"jsonrpc":"2.0","method":"x","params":{"id":7}') is None  # not top level
    assert head_id(b'{"jsonrpc":"2.0","id":1.5,') is None
    assert head_id(b'{"jsonrpc":"2.0","id":99999999999999999999,') is None
    error = too_long(10**9, 16, b'{"jsonrpc":"2.0","id":9,', "limits.max_line_bytes").error
    assert error is not None and error["id"] == 9 and "16 bytes" in error["error"]["message"]


def test_broken_json_is_a_parse_error_with_id_null_and_a_limit_is_an_invalid_request_under_its_id() -> None:
    broken = parse_failed("invalid JSON: x").error
    assert broken is not None and broken["id"] is None and broken["error"]["code"] == -32700
    deep = parse_failed("nested deeper than 200 levels", limit=True, head=b'{"jsonrpc":"2.0","id":"d",').error
    assert deep is not None and deep["id"] == "d" and deep["error"]["code"] == INVALID_REQUEST


def test_encoded_answers_are_strict_json() -> None:
    with pytest.raises(ValueError):
        encode({"jsonrpc": "2.0", "id": 1, "result": {"x": float("nan")}})
    assert json.loads(encode({"jsonrpc": "2.0", "id": "é", "result": {}})) == {
        "jsonrpc": "2.0",
        "id": "é",
        "result": {},
    }
