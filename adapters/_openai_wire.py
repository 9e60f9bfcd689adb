"""OpenAI-compatible wire shapes: request bodies out, strict validation of bodies in.

Anything that does not have the documented shape raises UpstreamProtocolError
naming what was wrong, so a misbehaving upstream is a clear, retryable failure
instead of a wrong answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from adapters._vectors import float_rows
from adapters.errors import UpstreamProtocolError
from adapters.types import ChatRequest, FinishReason, RerankRequest, RerankScore, Usage

RerankStyle = Literal["cohere", "tei"]


def chat_body(req: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": req.model,
        "messages": [{"role": m.role, "content": m.content} for m in req.messages],
    }
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.stop:
        body["stop"] = list(req.stop)
    return body


def rerank_body(req: RerankRequest, style: RerankStyle) -> dict[str, Any]:
    if style == "tei":
        return {"query": req.query, "texts": list(req.documents)}
    body: dict[str, Any] = {
        "model": req.model,
        "query": req.query,
        "documents": list(req.documents),
        "return_documents": False,
    }
    if req.top_n is not None:
        body["top_n"] = req.top_n
    return body


def finish_reason(value: Any) -> FinishReason:
    return "length" if value == "length" else "stop"


def read_usage(body: Any) -> Usage:
    usage = body.get("usage") if isinstance(body, Mapping) else None
    if not isinstance(usage, Mapping):
        return Usage()
    return Usage(input_tokens=_int(usage.get("prompt_tokens")), output_tokens=_int(usage.get("completion_tokens")))


def read_chat(body: Any, what: str) -> tuple[str, FinishReason, Usage]:
    choices = body.get("choices") if isinstance(body, Mapping) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, str | None) or message is None:
        raise UpstreamProtocolError(f"{what} chat: response has no choices[0].message")
    assert isinstance(first, Mapping)
    return content or "", finish_reason(first.get("finish_reason")), read_usage(body)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    done: bool = False
    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


def read_stream_event(line: str, what: str) -> StreamEvent | None:
    """One SSE line of a streamed chat: None for comments (": keepalive"), blank lines and other fields."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return StreamEvent(done=True)
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise UpstreamProtocolError(f"{what} chat: a stream event is not JSON") from exc
    if not isinstance(chunk, Mapping):
        raise UpstreamProtocolError(f"{what} chat: a stream event is not an object")
    usage = read_usage(chunk) if isinstance(chunk.get("usage"), Mapping) else None
    choices = chunk.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, Mapping) else None
    reason = choice.get("finish_reason")
    return StreamEvent(
        text=text if isinstance(text, str) else "",
        finish_reason=finish_reason(reason) if reason else None,
        usage=usage,
    )


def read_vectors(body: Any, count: int, what: str) -> tuple[list[list[float]], int]:
    """Vectors in input order (sorted by `index`), each finite floats, and the prompt token count."""
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else "no"
        raise UpstreamProtocolError(f"{what} embed: upstream returned {got} embeddings for {count} inputs")
    items = sorted(data, key=lambda d: d.get("index", -1) if isinstance(d, Mapping) else -1)
    if [d.get("index") if isinstance(d, Mapping) else None for d in items] != list(range(count)):
        raise UpstreamProtocolError(f"{what} embed: upstream embedding indices are not 0..{count - 1}")
    rows = [_vector(d.get("embedding"), what) for d in items]
    return float_rows(rows, count, 0, f"{what} embed"), read_usage_prompt(body)


def read_usage_prompt(body: Any) -> int:
    usage = body.get("usage") if isinstance(body, Mapping) else None
    return _int(usage.get("prompt_tokens")) if isinstance(usage, Mapping) else 0


def decode_base64_floats(data: str) -> list[float]:
    """Packed little-endian float32, as OpenAI's encoding_format=base64 sends it."""
    raw = base64.b64decode(data, validate=True)
    if len(raw) % 4:
        raise ValueError("not a whole number of float32 values")
    return np.frombuffer(raw, dtype="<f4").astype(np.float64).tolist()  # type: ignore[no-any-return]


def read_rerank(body: Any, style: RerankStyle, req: RerankRequest, what: str) -> tuple[tuple[RerankScore, ...], Usage]:
    items = body if style == "tei" else (body.get("results") if isinstance(body, Mapping) else None)
    if not isinstance(items, list):
        raise UpstreamProtocolError(f"{what} rerank: response has no list of results")
    key = "score" if style == "tei" else "relevance_score"
    scores: dict[int, float] = {}
    for item in items:
        index = item.get("index") if isinstance(item, Mapping) else None
        score = item.get(key) if isinstance(item, Mapping) else None
        if not isinstance(index, int) or not 0 <= index < len(req.documents) or not isinstance(score, int | float):
            raise UpstreamProtocolError(f"{what} rerank: a result lacks a valid index and {key}")
        scores[index] = float(score)
    ordered = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))
    if req.top_n is not None:
        ordered = ordered[: req.top_n]
    results = tuple(RerankScore(index=i, relevance_score=s) for i, s in ordered)
    return results, Usage(input_tokens=read_usage_prompt(body) if isinstance(body, Mapping) else 0)


def read_models(body: Any) -> list[str]:
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list):
        return []
    return [d["id"] for d in data if isinstance(d, Mapping) and isinstance(d.get("id"), str)]


def _vector(value: Any, what: str) -> list[float]:
    if isinstance(value, str):
        try:
            return decode_base64_floats(value)
        except ValueError as exc:
            raise UpstreamProtocolError(f"{what} embed: a base64 embedding is not packed float32") from exc
    if isinstance(value, list):
        return value
    raise UpstreamProtocolError(f"{what} embed: an embedding is neither a list of numbers nor base64")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
