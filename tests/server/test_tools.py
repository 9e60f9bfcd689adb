from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
from mcp import Client

from adapters.errors import UpstreamStatusError
from tests.support.fakes import FakeAdapter, fake_vector
from tests.support.gateway import fake_server

pytestmark = pytest.mark.anyio
ROUTES = {"routes": {"embed": ["a/m", "b/m"], "chat": ["a"], "rerank": ["b"]}}


@pytest.fixture
def adapters() -> dict[str, FakeAdapter]:
    return {"a": FakeAdapter("a"), "b": FakeAdapter("b")}


async def test_embed_returns_one_vector_per_text_in_order_with_one_compact_text_block(tmp_path: Path, adapters) -> None:
    server, _ = fake_server(tmp_path, adapters, routes=ROUTES)
    async with Client(server) as c:
        r = await c.call_tool("embed", {"input": ["alpha", "beta", "gamma"]})
    assert not r.is_error
    s = r.structured_content
    assert s["count"] == 3 and s["dimensions"] == 8 and s["adapter"] == "a"
    assert s["embeddings"] == [fake_vector(t) for t in ("alpha", "beta", "gamma")]
    assert len(r.content) == 1 and json.loads(r.content[0].text) == s
    assert s["route"][-1]["outcome"] == "ok"


async def test_embed_base64_packs_little_endian_float32(tmp_path: Path, adapters) -> None:
    server, _ = fake_server(tmp_path, adapters, routes=ROUTES)
    async with Client(server) as c:
        r = await c.call_tool("embed", {"input": ["x", "y"], "encoding": "base64"})
    s = r.structured_content
    raw = base64.b64decode(s["embeddings_b64"])
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert s["embeddings"] is None and len(floats) == 2 * s["dimensions"]
    assert floats[:8] == pytest.approx(fake_vector("x"), abs=1e-6)


async def test_embed_output_schema_has_no_per_float_item_schema(tmp_path: Path, adapters) -> None:
    server, _ = fake_server(tmp_path, adapters, routes=ROUTES)
    async with Client(server) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    props = tools["embed"].output_schema["properties"]
    assert "number" not in json.dumps(props["embeddings"])
    # no anyOf/items: a jsonschema client would otherwise descend into every row of every result
    assert props["embeddings"]["type"] == ["array", "null"] and "items" not in props["embeddings"]
    assert props["embeddings_b64"]["type"] == ["string", "null"]
    assert tools["embed"].input_schema["properties"]["input"]["anyOf"]


async def test_rerank_and_chat_return_their_published_shapes(tmp_path: Path, adapters) -> None:
    server, _ = fake_server(tmp_path, adapters, routes=ROUTES)
    async with Client(server) as c:
        rr = await c.call_tool(
            "rerank", {"query": "red cat", "documents": ["blue dog", "red cat sat"], "return_documents": True}
        )
        ch = await c.call_tool("chat", {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2})
    assert rr.structured_content["results"][0] == {"index": 1, "relevance_score": 1.0, "document": "red cat sat"}
    assert rr.structured_content["adapter"] == "b"
    assert ch.structured_content["message"] == {"role": "assistant", "content": "echo: one two"}
    assert ch.structured_content["finish_reason"] == "length"


async def test_fallback_moves_to_next_candidate_and_reports_the_route(tmp_path: Path, adapters) -> None:
    adapters["a"].fail_with = lambda: UpstreamStatusError(503, "busy")
    server, _ = fake_server(tmp_path, adapters, routes=ROUTES)
    async with Client(server) as c:
        r = await c.call_tool("embed", {"input": "x"})
    route = r.structured_content["route"]
    assert [(x["adapter"], x["outcome"]) for x in route] == [("a", "failed"), ("b", "ok")]
    assert r.structured_content["adapter"] == "b"


BAD_CALLS = [
    ("embed", {"input": 5}, "input"),
    ("embed", {"input": []}, "at least 1"),
    ("embed", {"input": ["x"] * 2049}, "2048"),
    ("embed", {"input": "x" * 40000}, "32768"),
    ("embed", {"input": ["x"], "model": "nope"}, "no adapter serves model 'nope'"),
    ("embed", {"input": ["x"], "model": "ghost/m"}, "unknown adapter 'ghost'"),
    ("rerank", {"query": "q", "documents": []}, "at least 1"),
    ("rerank", {"query": "", "documents": ["d"]}, "at least 1"),
    ("rerank", {"query": "q", "documents": ["d"] * 1001}, "1000"),
    ("chat", {"messages": []}, "at least 1"),
    ("chat", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
]


@pytest.mark.parametrize(("tool", "args", "needle"), BAD_CALLS)
async def test_bad_input_is_a_clear_tool_error_and_the_server_keeps_serving(
    tmp_path: Path, adapters, tool: str, args: dict, needle: str
) -> None:
    server, _ = fake_server(tmp_path, adapters, routes=ROUTES)
    async with Client(server) as c:
        bad = await c.call_tool(tool, args)
        good = await c.call_tool("embed", {"input": "still here"})
    assert bad.is_error and needle in bad.content[0].text
    assert "Traceback" not in bad.content[0].text
    assert not good.is_error


async def test_models_lists_every_routable_model_and_health_shows_adapters(tmp_path: Path, adapters) -> None:
    server, _ = fake_server(tmp_path, adapters, routes=ROUTES)
    async with Client(server) as c:
        models = (await c.call_tool("models", {})).structured_content
        health = json.loads((await c.read_resource("gateway://health")).contents[0].text)
    assert {m["name"] for m in models["models"]} == {"a/m", "b/m"}
    assert set(health["adapters"]) == {"a", "b"} and health["capabilities"]["embed"] is True


async def test_every_call_leaves_start_and_finish_audit_records_without_raw_text(tmp_path: Path, adapters) -> None:
    server, ref = fake_server(tmp_path, adapters, routes=ROUTES)
    async with Client(server) as c:
        await c.call_tool("embed", {"input": ["secret sauce"]})
        path = ref.get().audit.path
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["start", "finish"]
    assert lines[0]["call_id"] == lines[1]["call_id"] and lines[1]["outcome"] == "ok"
    assert "secret sauce" not in path.read_text()
