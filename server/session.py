"""A client's session and the switches it holds (privacy mode), kept per session, never per process.

Where a session lives depends on the transport:

- stdio serves one client: the process's one `SessionState` (on AppState);
- legacy SSE and stateful Streamable HTTP: the SDK's connection for that
  client, in its per-connection `state` dict (gone when the session ends, so
  nothing here needs a cap or an eviction rule);
- stateless HTTP, and any request in the 2026-07-28 per-request envelope over
  HTTP, has no session: a switch there would outlive nothing, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp.server.context import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from server import sdk

if TYPE_CHECKING:
    from server.state import AppState

STATE_KEY = "model_gateway.session"


@dataclass(slots=True)
class SessionState:
    privacy: bool = False


def session_of(state: AppState, request: ServerRequestContext[Any, Any]) -> SessionState | None:
    """The session this request belongs to, or None when it has none."""
    if state.settings.transport == "stdio":
        return state.local_session
    if state.settings.stateless or request.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    found = sdk.connection_of(request).state.setdefault(STATE_KEY, SessionState())
    assert isinstance(found, SessionState)
    return found


def privacy_of(state: AppState, request: ServerRequestContext[Any, Any]) -> bool:
    """The privacy mode a call runs under: the operator's, or else its session's."""
    if state.settings.privacy_mode:
        return True
    session = session_of(state, request)
    return session is not None and session.privacy
