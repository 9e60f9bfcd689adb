"""What every tool shares: clear argument errors, the caller's identity and progress."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from mcp import Client
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from adapters.types import ChatRequest, ChatResult
from server.toolkit import argument_problems
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server

pytestmark = pytest.mark.anyio
PLANTED = "planted-value-nobody-may-see"


class Message(BaseModel):
    role: Literal["user", "system"]


class Args(BaseModel):
    input: (
        Annotated[str, Field(max_length=3)] | Annotated[list[Annotated[str, Field(max_length=3)]], Field(max_length=2)]
    )
    messages: list[Message]
    count: int


def problems(raw: dict[str, object]) -> tuple[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(Args).validate_python(raw)
    return argument_problems("tool", info.value)


def test_an_argument_error_is_one_line_naming_each_field_and_what_is_wrong_without_the_value() -> None:
    message, fields = problems({"input": [PLANTED] * 3, "messages": [{"role": PLANTED}], "count": PLANTED})
    assert message.startswith("invalid arguments for tool: ") and "\n" not in message
    assert "input: List should have at most 2 items" in message
    assert "messages.0.role: Input should be 'user' or 'system'" in message
    assert "count: Input should be a valid integer" in message
    assert PLANTED not in message and fields == ["count", "input", "messages"]


def test_the_arm_of_a_union_that_did_not_apply_is_not_what_the_error_names() -> None:
    message, _ = problems({"input": "four", "messages": [], "count": 1})
    assert message == "invalid arguments for tool: input: String should have at most 3 characters"
    message, _ = problems({"input": 5, "messages": [], "count": 1})
    assert message == "invalid arguments for tool: input: Input should be a valid string"


class Recording(FakeAdapter):
    def __init__(self) -> None:
        super().__init__("a")
        self.progress_given: list[bool] = []

    async def chat(self, req: ChatRequest) -> ChatResult:
        self.progress_given.append(req.progress is not None)
        return await super().chat(req)


async def test_adapters_get_a_progress_reporter_only_when_the_request_asks_for_progress(tmp_path: Path) -> None:
    adapter = Recording()
    server, _ = fake_server(tmp_path, {"a": adapter})
    chat = {"messages": [{"role": "user", "content": "a b"}]}

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        return None

    async with Client(server, mode="legacy") as client:
        await client.call_tool("chat", chat)
        await client.call_tool("chat", chat, progress_callback=on_progress)
    assert adapter.progress_given == [False, True]


async def test_chat_sends_progress_when_the_client_asks(tmp_path: Path) -> None:
    server, _ = fake_server(tmp_path, {"a": FakeAdapter("a")})
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    # JSON-RPC framing, as on every real transport: the progress token travels in the request's _meta
    async with Client(server, mode="legacy") as c:
        r = await c.call_tool(
            "chat", {"messages": [{"role": "user", "content": "a b c"}]}, progress_callback=on_progress
        )
    assert not r.is_error
    assert [d for d, _, _ in seen] == [1, 2, 3]


ODD_STRINGS = [
    "the quick brown fox",
    "true",
    " false\n",
    "null",
    "nullish",
    "5",
    '"quoted"',
    '["a", "b"]',
    '\t{"role": "user"}',
    "[not json",
    "{",
    "",
    "\u00a0[1]",  # a no-break space is not JSON whitespace: the SDK's parse fails on it, and so is skipped
]


@pytest.mark.parametrize("text", ODD_STRINGS)
def test_argument_pre_parsing_gives_what_the_sdk_gives_for_every_kind_of_string(text: str) -> None:
    from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata

    from server.manifests import RequestLimits
    from server.tools import tool_list

    for tool in tool_list(RequestLimits()):
        ours = tool.fn_metadata
        theirs = FuncMetadata.model_construct(**dict(ours))
        for name in ours.arg_model.model_fields:
            data = {name: text, "unknown": text}
            assert ours.pre_parse_json(data) == theirs.pre_parse_json(data), (tool.name, name)


async def test_a_list_sent_as_a_json_string_is_still_a_list(tmp_path: Path) -> None:
    adapter = FakeAdapter("a")
    server, _ = fake_server(tmp_path, {"a": adapter})
    async with Client(server) as client:
        one = await client.call_tool("embed", {"input": '["x", "y"]'})
        plain = await client.call_tool("embed", {"input": "the quick brown fox"})
    assert one.structured_content is not None and one.structured_content["count"] == 2
    assert plain.structured_content is not None and plain.structured_content["count"] == 1
