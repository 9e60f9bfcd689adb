"""Typed calls: their size, canonical audit form, adapter request and published result."""

from __future__ import annotations

import base64
import struct

from adapters.types import ChatMessage, ChatResult, ChatTimings, EmbedResult, RerankResult, RerankScore, Usage
from server.calls import Caller, ChatCall, EmbedCall, RerankCall
from server.limits import Size
from server.router import Attempt

ROUTE = [Attempt("a", "m", "failed", 1.0, "down"), Attempt("b", "m", "ok", 2.0)]


def test_an_embed_call_knows_its_size_audit_form_and_adapter_request() -> None:
    call = EmbedCall(Caller("alice"), ("ab", "cde"), "b/m", 4)
    assert call.size() == Size(texts=2, chars=5) and call.size().units() == {"texts": 2, "chars": 5, "max_tokens": 0}
    assert call.canonical() == {"input": ["ab", "cde"], "model": "b/m", "dimensions": 4}
    req = call.adapter_request("m")
    assert (req.model, req.texts, req.dimensions, req.progress) == ("m", ("ab", "cde"), 4, None)


def test_an_embed_result_has_the_same_evidence_whatever_its_encoding() -> None:
    value = EmbedResult("m", [[0.5, -0.25], [1.0, 0.0]], Usage(3))
    floats = EmbedCall(Caller("a"), ("x", "y")).output(value, "b", ROUTE)
    packed = EmbedCall(Caller("a"), ("x", "y"), encoding="base64").output(value, "b", ROUTE)
    assert floats.evidence() == packed.evidence() and floats.embeddings == [[0.5, -0.25], [1.0, 0.0]]
    raw = base64.b64decode(packed.embeddings_b64 or "")
    assert struct.unpack("<4f", raw) == (0.5, -0.25, 1.0, 0.0) and packed.embeddings is None
    assert floats.route == [a.public() for a in ROUTE] and floats.count == 2 and floats.dimensions == 2


def test_a_rerank_result_echoes_documents_only_when_asked() -> None:
    value = RerankResult("m", (RerankScore(1, 0.9), RerankScore(0, 0.1)), "upstream", Usage(2))
    call = RerankCall(Caller("a"), "q", ("d0", "d1"))
    plain = call.output(value, "b", ROUTE)
    echoed = RerankCall(Caller("a"), "q", ("d0", "d1"), return_documents=True).output(value, "b", ROUTE)
    assert plain.results == [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}]
    assert [r.get("document") for r in echoed.results] == ["d1", "d0"]
    assert plain.evidence() == [(1, 0.9), (0, 0.1)] and call.size() == Size(documents=2, chars=5)


def test_a_chat_call_counts_messages_and_carries_its_options_to_the_adapter() -> None:
    msgs = (ChatMessage("system", "be brief"), ChatMessage("user", "hi"))
    call = ChatCall(Caller("a"), msgs, None, 5, 0.0, ("\n",))
    assert call.size() == Size(texts=2, messages=2, chars=10, max_tokens=5)
    req = call.adapter_request("m")
    assert (req.max_tokens, req.temperature, req.stop) == (5, 0.0, ("\n",))
    out = call.output(ChatResult("m", "ok", "stop", Usage(4, 1), ChatTimings(3.0)), "b", ROUTE)
    assert out.message == {"role": "assistant", "content": "ok"} and out.usage == {
        "input_tokens": 4,
        "output_tokens": 1,
    }
    assert out.evidence() == {"content": "ok", "finish_reason": "stop"}
