"""What every tool shares: the registered tool type, the call's caller, and MCP <-> call-path translation.

`GatewayTool` is the SDK's `Tool` with what the SDK leaves out of a tool call:
over `max_in_flight` a model tool answers "busy" before even its arguments are
validated (server/shedding.py; over Streamable HTTP most such calls are answered
before the SDK sees them, server/busy_edge.py, and this check covers stdio, legacy
SSE and the race between the two); a call whose arguments fail validation is
answered with one clear line naming each field and limit (never the input),
counted and audited like every other refused call; what the call logs goes to
its own session's log notifications only (server/client_logs.py); and a call
whose HTTP client hangs up is cancelled where it runs (server/http_guard.py),
so its upstream request is closed and its audit record says `cancelled`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult
from pydantic import Field, ValidationError

from adapters.errors import safe_detail
from server.busy_edge import refuse_busy
from server.calls import Caller, Out, ToolCall
from server.errors import GatewayError
from server.http_guard import CLIENT_GONE, CLIENT_GONE_MESSAGE, request_state
from server.limits import bind_limits
from server.manifests import RequestLimits
from server.pipeline import refuse_arguments, run_call
from server.principal import principal_of
from server.session import privacy_of, session_of
from server.state import AppState

MAX_PROBLEMS = 5
# pydantic names the arm of a union it tried ("str", "list[constrained-str]"): not a field
_ARMS = {"str", "int", "float", "bool", "none", "list", "dict"}
# "not a string" / "not a list" from the arm that did not apply: the other arm's complaint says more
_WRONG_ARM = {"string_type", "list_type"}


def state_of(request: ServerRequestContext[Any, Any]) -> AppState:
    state = request.lifespan_context
    if not isinstance(state, AppState):
        raise ToolError("gateway is starting")
    return state


@dataclass(frozen=True, slots=True)
class Inbound:
    """What a tool needs from the SDK's Context, read once (each read of `ctx.request_context` costs ~5 µs)."""

    state: AppState
    caller: Caller
    request: ServerRequestContext[Any, Any]


# The request a GatewayTool is running, for the tool function it calls: reading `ctx.request_context`
# again costs ~7 us (a pydantic private attribute), a context variable well under one.
_running: ContextVar[ServerRequestContext[Any, Any] | None] = ContextVar("model_gateway_request", default=None)


def inbound(ctx: Context[Any, Any], progress: bool = False) -> Inbound:
    """The state, and who calls under which privacy mode (with a progress reporter, when asked and requested)."""
    request = _running.get() or ctx.request_context
    state = state_of(request)
    principal = principal_of(request.request, state.settings.principal)
    reporter = ctx.report_progress if progress and _wants_progress(request) else None
    return Inbound(state, Caller(principal, privacy_of(state, request), reporter), request)


def _wants_progress(request: ServerRequestContext[Any, Any]) -> bool:
    """The request's `_meta` carries a progress token (without one, adapters skip the reporting work)."""
    meta = request.meta
    return meta is not None and meta.get("progress_token") is not None


async def serve(state: AppState, call: ToolCall[Out]) -> CallToolResult:
    """Run a model call; a gateway error becomes a tool error the model can read, with secrets masked."""
    try:
        result = await run_call(state, call)
    except GatewayError as exc:
        raise ToolError(state.redactor.text(exc.message)) from exc
    return result.tool_result()


class GatewayTool(Tool):
    sheds: bool = Field(False, exclude=True, description="A model tool: answered 'busy' over max_in_flight.")

    async def run(self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False) -> Any:
        request = context.request_context
        state = state_of(request)
        http = request_state(request.request)
        hangup = http.hangup() if http is not None and request.request_id is not None else nullcontext()
        token = _running.set(request)
        logs = state.client_logs.bind(session_of(state, request))
        try:
            with hangup:
                return await self._run(arguments, context, state, request, convert_result)
        finally:
            state.client_logs.unbind(logs)
            _running.reset(token)
        # reached only when the hang-up cancelled the call: nobody reads this answer
        raise MCPError(code=CLIENT_GONE, message=CLIENT_GONE_MESSAGE)

    async def _run(
        self,
        arguments: dict[str, Any],
        context: Context[Any, Any],
        state: AppState,
        request: ServerRequestContext[Any, Any],
        convert_result: bool,
    ) -> Any:
        if self.sheds and not state.shedder.enter():
            await self._shed(state)  # raises: a busy answer, before anything else is spent on the call
        try:
            return await super().run(arguments, context, convert_result)
        except ToolError as exc:
            if isinstance(exc, UnexpectedToolError) or not isinstance(exc.__cause__, ValidationError):
                raise
            message, fields = argument_problems(self.name, exc.__cause__)
            principal = principal_of(request.request, state.settings.principal)
            await refuse_arguments(state, self.name, principal, fields)
            raise ToolError(message) from None
        finally:
            if self.sheds:
                state.shedder.leave()

    async def _shed(self, state: AppState) -> None:
        raise ToolError(await refuse_busy(state, self.name))


def argument_problems(tool: str, exc: ValidationError) -> tuple[str, list[str]]:
    """One line naming each bad field and what is wrong (never the value), and the parameters concerned."""
    problems: dict[str, list[tuple[str, str]]] = {}
    for err in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in err["loc"] if not _is_arm(p)) or "(arguments)"
        problems.setdefault(safe_detail(path, 80), []).append((err["type"], safe_detail(err["msg"], 160)))
    parts = []
    for path, found in list(problems.items())[:MAX_PROBLEMS]:
        specific = [msg for kind, msg in found if kind not in _WRONG_ARM] or [found[0][1]]
        parts.append(f"{path}: {specific[0]}")
    fields = sorted({path.split(".")[0] for path in problems})
    return f"invalid arguments for {tool}: " + "; ".join(parts), fields


def _is_arm(part: str | int) -> bool:
    return isinstance(part, str) and (part in _ARMS or "[" in part or "-" in part)


class Arguments(FuncMetadata):
    """The SDK's argument handling, without a failed JSON parse of every plain-text argument.

    The SDK tries `json.loads` on each string given for a parameter that is not a plain `str` (a host
    that sends a list as a JSON string still works), and keeps the parse only when it is a list, an
    object, `true`, `false` or `null`. Most strings (an embed input, a model name) can be none of
    those, and the failed parse cost ~7 of the ~10 us argument validation took; those skip it.
    """

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        if any(isinstance(value, str) and _may_be_json(value) for value in data.values()):
            return super().pre_parse_json(data)
        return data


def _may_be_json(text: str) -> bool:
    """Whether `json.loads(text)` could give a list, an object, a boolean or null."""
    stripped = text.strip(" \t\n\r")  # JSON's whitespace, no more
    return stripped[:1] in ("[", "{") or stripped in ("true", "false", "null")


def gateway_tool(fn: Callable[..., Any], limits: RequestLimits, *, sheds: bool = False) -> GatewayTool:
    """Register `fn` as a tool whose schema carries the configured limits (server/limits.py)."""
    tool = GatewayTool.from_function(bind_limits(fn, limits), structured_output=True)
    assert isinstance(tool, GatewayTool)
    tool.fn_metadata = Arguments.model_construct(**dict(tool.fn_metadata))
    tool.sheds = sheds
    if sheds:
        # Model tools build their results from typed values (server/calls.py), so the SDK's per-call
        # re-validation of structured content against the output model is skipped; the published
        # outputSchema stays (the SDK reads these fields live; clients still validate against it).
        tool.fn_metadata.output_model = None
    return tool
