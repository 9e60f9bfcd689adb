from __future__ import annotations

import logging

import pytest

from server.logs import SessionIdFilter

SID = "5a4b23c4b882494cbab96fcaff0ff7f8"


def record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    "text",
    [
        f"Created new transport with session ID: {SID}",
        f"Terminating session: {SID.upper()}",
        "Could not find session for ID: 5a4b23c4-b882-494c-bab9-6fcaff0ff7f8",
    ],
)
def test_above_debug_the_libraries_lines_show_no_session_id(text: str) -> None:
    r = record("mcp.server.streamable_http_manager", logging.INFO, "%s", text)
    assert SessionIdFilter().filter(r)
    assert "[session]" in r.getMessage() and "5a4b23c4" not in r.getMessage().lower()


def test_at_debug_and_in_the_gateways_own_lines_nothing_is_masked() -> None:
    debug = record("mcp.server.streamable_http", logging.DEBUG, "Session %s", SID)
    own = record("model_gateway.audit", logging.WARNING, "sha256 %s", SID)
    for r in (debug, own):
        SessionIdFilter().filter(r)
    assert SID in debug.getMessage() and SID in own.getMessage()
