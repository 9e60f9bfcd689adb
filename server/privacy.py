"""Privacy mode as a tool and a resource: read it always, switch it when policy allows.

Switching it on only narrows routing (local adapters only), so it is always
allowed. Switching it off widens what a call may reach, so it is a policy
decision: tool `privacy`, capability `admin`, model `off`. The shipped policy
guard denies it; the operator lifts privacy mode by restarting without
`--privacy-mode` or by lifting that guard by name (`override`) in the user
policy.json; a user rule alone cannot. Either switch takes effect
for the next routing decision, filtering the cached snapshot; discovery is not
re-run. Every switch is audited.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from server.errors import GatewayError
from server.policy import PolicyRequest
from server.principal import principal_for
from server.state import AppState


class PrivacyOutput(BaseModel):
    privacy_mode: bool = Field(description="True: calls are routed to local adapters only.")
    changed: bool = Field(description="Whether this call switched the mode.")
    local_adapters: list[str] = Field(description="Adapters calls may reach while privacy mode is on.")


def privacy_view(state: AppState, changed: bool = False) -> PrivacyOutput:
    local = sorted(n for n, s in state.discovery.snapshot.adapters.items() if s.privacy == "local")
    return PrivacyOutput(privacy_mode=state.privacy_mode, changed=changed, local_adapters=local)


async def set_privacy(state: AppState, on: bool) -> PrivacyOutput:
    """Switch privacy mode for `principal`; lifting it needs a policy allow. Raises GatewayError when refused."""
    principal = principal_for(state.settings.principal)
    if on == state.privacy_mode:
        return privacy_view(state)
    base = {"principal": principal, "tool": "privacy", "capability": "admin", "model": "on" if on else "off"}
    if not on:
        req = PolicyRequest("privacy", "admin", "off", "gateway", "local", principal)
        decision = state.policy.evaluate(req)
        if not decision.allowed:
            await state.audit.write({"event": "deny", **base, "decision": "deny", "rule": decision.rule})
            why = f" ({decision.reason})" if decision.reason else ""
            raise ToolError(f"policy {decision.rule} denies turning privacy mode off{why}")
        rule = decision.rule
    else:
        rule = "always-allowed"
    # audited before it takes effect: a switch that cannot be recorded does not happen
    await state.audit.write({"event": "privacy", **base, "decision": "allow", "rule": rule})
    state.set_privacy_mode(on)
    return privacy_view(state, changed=True)


def register_privacy(server: MCPServer[AppState], ref: Any) -> None:
    @server.tool(structured_output=True)
    async def privacy(
        ctx: Context,
        enable: Annotated[
            bool | None,
            Field(
                None, description="true: route to local adapters only; false: lift it (if policy allows); omit: read."
            ),
        ] = None,
    ) -> PrivacyOutput:
        """Read or switch privacy mode. While it is on, calls reach local adapters only.

        Switching it on always works and applies to the next call. Switching it
        off is a policy decision and is refused unless the gateway's policy allows it.
        """
        state = ctx.request_context.lifespan_context
        assert isinstance(state, AppState)
        if enable is None:
            return privacy_view(state)
        try:
            return await set_privacy(state, enable)
        except GatewayError as exc:
            raise ToolError(exc.message) from exc

    @server.resource("gateway://privacy", mime_type="application/json")
    async def privacy_resource() -> str:
        """Whether privacy mode is on, and which adapters calls may reach while it is."""
        return json.dumps(privacy_view(ref.get()).model_dump(), separators=(",", ":"))
