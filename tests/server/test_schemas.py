"""Result types: structured content plus the same as one compact JSON text block."""

from __future__ import annotations

import json

import pytest

from adapters.types import (
    ChatMessage,
    ChatResult,
    ChatTimings,
    EmbedResult,
    RerankResult,
    RerankScore,
    Usage,
)
from server.calls import Caller, ChatCall, EmbedCall, RerankCall
from server.router import Attempt
from server.schemas import EmbedOutput, RerankOutput, _Result


def test_a_result_is_structured_content_and_one_compact_text_block_that_says_the_same() -> None:
    out = EmbedCall(Caller("a"), ("x",)).output(EmbedResult("m", [[0.1, 0.2]], Usage(1)), "b", [])
    result = out.tool_result()
    assert len(result.content) == 1 and json.loads(result.content[0].text) == result.structured_content
    assert ", " not in result.content[0].text and result.structured_content["embeddings"] == [[0.1, 0.2]]


def test_the_published_vector_fields_have_no_per_float_item_schema() -> None:
    props = EmbedOutput.model_json_schema()["properties"]
    assert props["embeddings"]["type"] == ["array", "null"] and set(props["embeddings"]) == {
        "type",
        "description",
        "default",
        "title",
    }
    assert props["embeddings_b64"]["type"] == ["string", "null"] and "items" not in json.dumps(props["embeddings"])


def _as_constructed(out: _Result) -> _Result:
    """The same result made the slow way: pydantic's model_construct over the same field values."""
    made = type(out).model_construct(**out.__dict__)
    if out.__pydantic_private__:
        for name, value in out.__pydantic_private__.items():
            setattr(made, name, value)
    return made


def test_results_built_directly_are_what_model_construct_makes_down_to_the_bytes_of_the_tool_result() -> None:
    caller = Caller("a")
    vectors = EmbedResult("m", [[0.1, 0.2], [0.3, 0.4]], Usage(3), 1)
    ranked = RerankResult("r", [RerankScore(1, 0.9), RerankScore(0, 0.1)], "cross-encoder", Usage(5))
    reply = ChatResult("c", "hello", "stop", Usage(2, 1), ChatTimings(12.5, 3.0, 80.0))
    route = [Attempt("b", "m", "ok", 1.5)]
    outs = [
        EmbedCall(caller, ("x", "y")).output(vectors, "b", route),
        EmbedCall(caller, ("x", "y"), encoding="base64").output(vectors, "b", route),
        RerankCall(caller, "q", ("d0", "d1"), return_documents=True).output(ranked, "b", route),
        ChatCall(caller, (ChatMessage("user", "hi"),)).output(reply, "b", route),
    ]
    for out in outs:
        slow = _as_constructed(out)
        assert list(out.__dict__.items()) == list(slow.__dict__.items())
        assert out.model_fields_set == slow.model_fields_set and out.__pydantic_extra__ == slow.__pydantic_extra__
        assert out.__pydantic_private__ == slow.__pydantic_private__ and out == slow
        assert out.tool_result().model_dump_json(by_alias=True) == slow.tool_result().model_dump_json(by_alias=True)
        assert out.evidence() == slow.evidence()


def test_building_a_result_without_every_field_fails_loudly() -> None:
    with pytest.raises(KeyError, match="route"):
        RerankOutput.built(model="r", adapter="b", method="upstream", results=[], usage={})
