"""Result types: structured content plus the same as one compact JSON text block."""

from __future__ import annotations

import json

from adapters.types import EmbedResult, Usage
from server.calls import Caller, EmbedCall
from server.schemas import EmbedOutput


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
