"""Privacy mode: the operator's, for the whole gateway, and a client's, for its own session.

The operator's mode (`--privacy-mode`, MODEL_GATEWAY_PRIVACY_MODE) holds for
every call of the process; no client can lift it, and remote adapters are not
even probed under it. A client may switch privacy mode for its own session
with the `privacy` tool (server/session.py says what a session is on each
transport): switching it on only narrows that session's routing, so it is
always allowed; switching it off widens what the session may reach, so it is a
policy decision (tool `privacy`, capability `admin`, model `off`), which the
shipped policy guard `privacy-off-needs-operator` denies; a user rule alone
cannot lift it, only naming the guard in `override` in the user policy.json.
Every switch is audited before it takes effect; it applies from the session's
next call, filtering the cached snapshot.
"""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from server.pipeline import audit
from server.policy import PolicyRequest
from server.session import SessionState, session_of
from server.state import AppState
from server.toolkit import inbound


class PrivacyOutput(BaseModel):
    privacy_mode: bool = Field(description="True: this session's calls are routed to local adapters only.")
    changed: bool = Field(description="Whether this call switched the mode.")
    operator: bool = Field(
        description="True: the operator set privacy mode for the whole gateway; it cannot be lifted."
    )
    local_adapters: list[str] = Field(description="Adapters calls may reach while privacy mode is on.")


def privacy_view(state: AppState, on: bool, changed: bool = False) -> PrivacyOutput:
    local = sorted(n for n, s in state.discovery.snapshot.adapters.items() if s.privacy == "local")
    return PrivacyOutput(privacy_mode=on, changed=changed, operator=state.privacy_mode, local_adapters=local)


async def privacy(
    ctx: Context[AppState],
    enable: Annotated[
        bool | None,
        Field(None, description="true: route to local adapters only; false: lift it (if policy allows); omit: read."),
    ] = None,
) -> PrivacyOutput:
    """Read or switch privacy mode for this session. While it is on, calls reach local adapters only.

    Switching it on always works and applies to this session's next call.
    Switching it off is a policy decision and is refused unless the gateway's
    policy allows it; privacy mode set by the gateway's operator cannot be lifted.
    """
    io = inbound(ctx)
    state, caller = io.state, io.caller
    if enable is None or enable == caller.privacy:
        return privacy_view(state, caller.privacy)
    session = session_of(state, io.request)
    if session is None:
        raise ToolError("privacy mode cannot be switched here: this request has no session (stateless HTTP)")
    base = {"principal": caller.principal, "tool": "privacy", "capability": "admin", "model": "on" if enable else "off"}
    rule = "always-allowed" if enable else await _may_lift(state, caller.principal, base)
    # audited before it takes effect: a switch that cannot be recorded does not happen
    await audit(state, "privacy", {**base, "decision": "allow", "rule": rule})
    _switch(session, enable)
    return privacy_view(state, enable, changed=True)


async def _may_lift(state: AppState, principal: str, base: dict[str, Any]) -> str:
    """The rule that lets this principal lift its session's privacy mode; refused (and audited) otherwise."""
    if state.privacy_mode:
        await audit(state, "deny", {**base, "decision": "deny", "rule": "operator"})
        raise ToolError("privacy mode was set by the gateway's operator; a client cannot lift it")
    decision = state.policy.evaluate(PolicyRequest("privacy", "admin", "off", "gateway", "local", principal))
    if not decision.allowed:
        await audit(state, "deny", {**base, "decision": "deny", "rule": decision.rule})
        why = f" ({decision.reason})" if decision.reason else ""
        raise ToolError(f"policy {decision.rule} denies turning privacy mode off{why}")
    return decision.rule


def _switch(session: SessionState, on: bool) -> None:
    session.privacy = on
