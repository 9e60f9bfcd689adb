"""One source for request limits: performance-config's `limits` shape both the published schemas and the checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from mcp import Client
from pydantic import BaseModel, Field

from server.errors import LimitError
from server.limits import Limit, Size, bind_limits, check
from server.manifests import RequestLimits
from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server

pytestmark = pytest.mark.anyio
LIMITS = {
    "max_texts": 3,
    "max_text_chars": 50,
    "max_total_chars": 100,
    "max_documents": 4,
    "max_messages": 2,
    "max_message_chars": 20,
    "max_tokens": 16,
}


def small_gateway(tmp_path: Path) -> tuple[Any, Any]:
    return fake_server(tmp_path, {"a": FakeAdapter("a")}, performance={"limits": LIMITS})


async def test_a_changed_limit_changes_the_published_schemas(tmp_path: Path) -> None:
    server, _ = small_gateway(tmp_path)
    async with Client(server) as c:
        tools = {t.name: t.input_schema for t in (await c.list_tools()).tools}
    text, texts = tools["embed"]["properties"]["input"]["anyOf"]
    assert text["maxLength"] == 50 and texts["maxItems"] == 3 and texts["items"]["maxLength"] == 50
    assert (
        tools["embed"]["properties"]["input"]["description"]
        == "A text or a list of up to 3 texts (50 characters each)."
    )
    rerank = tools["rerank"]["properties"]
    assert rerank["documents"]["maxItems"] == 4 and rerank["query"]["maxLength"] == 50
    assert rerank["top_n"]["anyOf"][0]["maximum"] == 4 and "Up to 4 candidate" in rerank["documents"]["description"]
    chat = tools["chat"]
    assert chat["properties"]["messages"]["maxItems"] == 2
    assert chat["$defs"]["MessageIn"]["properties"]["content"]["maxLength"] == 20
    assert chat["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 16


OVER = [
    ("embed", {"input": ["a", "b", "c", "d"]}, "at most 3 items"),
    ("embed", {"input": "x" * 51}, "at most 50 characters"),
    ("embed", {"input": ["x" * 40, "y" * 40, "z" * 40]}, "limit 100"),
    ("rerank", {"query": "q", "documents": ["d"] * 5}, "at most 4 items"),
    ("rerank", {"query": "q", "documents": ["d"], "top_n": 5}, "less than or equal to 4"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}] * 3}, "at most 2 items"),
    ("chat", {"messages": [{"role": "user", "content": "x" * 21}]}, "at most 20 characters"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 17}, "less than or equal to 16"),
]


@pytest.mark.parametrize(("tool", "args", "needle"), OVER)
async def test_a_changed_limit_changes_the_runtime_check(tmp_path: Path, tool: str, args: dict, needle: str) -> None:
    server, gateway = small_gateway(tmp_path)
    async with Client(server) as c:
        refused = await c.call_tool(tool, args)
        fine = await c.call_tool("embed", {"input": ["x" * 50]})
        calls = gateway.get().adapters["a"].calls
    assert refused.is_error and needle in refused.content[0].text
    assert not fine.is_error and calls == [("embed", 1)]


def test_check_names_the_limit_a_call_exceeds() -> None:
    limits = RequestLimits.model_validate(LIMITS)
    check(limits, Size(texts=3, chars=100, documents=4, messages=2, max_tokens=16))
    for size, needle in [
        (Size(texts=4), "too many texts: 4 > limit 3"),
        (Size(documents=5), "too many documents: 5 > limit 4"),
        (Size(messages=3), "too many messages: 3 > limit 2"),
        (Size(chars=101), "101 characters > limit 100"),
        (Size(max_tokens=17), "max_tokens 17 > limit 16"),
    ]:
        with pytest.raises(LimitError, match=needle):
            check(limits, size)


def test_every_request_limit_is_read_by_the_schemas_or_the_checks() -> None:
    import inspect

    from server import limits as limits_module
    from server import tools
    from server.stdio import serve  # the line cap is the stdio wire's

    source = inspect.getsource(tools) + inspect.getsource(limits_module.check) + inspect.getsource(serve)
    unread = [name for name in RequestLimits.model_fields if name not in source]
    assert unread == []


class Note(BaseModel):
    text: Annotated[str, Limit("max_message_chars")]


class Plain(BaseModel):
    text: str


async def bounded(
    notes: Annotated[list[Note], Limit("max_messages")],
    top: Annotated[int, Field(description="at most {max_tokens}"), Limit("max_tokens", "le")],
    plain: Plain,
) -> Plain:
    return plain


def test_bind_limits_resolves_markers_in_parameters_and_models_and_leaves_the_rest_alone() -> None:
    from pydantic import TypeAdapter

    bound = bind_limits(bounded, RequestLimits(max_messages=2, max_message_chars=5, max_tokens=9))
    hints = bound.__annotations__
    notes, top = TypeAdapter(hints["notes"]), TypeAdapter(hints["top"])
    assert notes.validate_python([{"text": "12345"}]) and top.validate_python(9) == 9
    with pytest.raises(ValueError, match="at most 5 characters"):
        notes.validate_python([{"text": "123456"}])
    with pytest.raises(ValueError, match="at most 2 items"):
        notes.validate_python([{"text": "a"}] * 3)
    with pytest.raises(ValueError, match="less than or equal to 9"):
        top.validate_python(10)
    assert top.json_schema()["description"] == "at most 9"
    assert hints["plain"] is Plain and hints["return"] is Plain and bound.__doc__ == bounded.__doc__
