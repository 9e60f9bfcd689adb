"""Ollama wire shapes: request bodies out, strict reading of answers in.

Pure functions of JSON values: they run wherever the answer is decoded (a worker
thread for large answers). Anything without the documented shape is an
UpstreamProtocolError naming what was wrong, never data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from adapters._http import redact_tokens
from adapters._vectors import float_rows
from adapters.base import ModelInfo
from adapters.errors import (
    AdapterError,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamProtocolError,
    UpstreamStatusError,
    safe_detail,
)
from adapters.naming import capabilities_from_name
from adapters.types import Capability, ChatRequest, ChatResult, ChatTimings, FinishReason, Usage

_NS_PER_MS = 1_000_000
# Ollama embeds, and reranks by embedding cosine, with the same models.
_ENCODER: frozenset[Capability] = frozenset({"embed", "rerank"})


def status_error(status: int, message: str, retry_after_s: float | None) -> AdapterError:
    text = message.lower()
    if status == 404 and "model" in text and "not found" in text:
        return ModelNotFoundError(message)
    if status == 400:
        return InvalidRequestError(message)
    return UpstreamStatusError(status, message, retry_after_s=retry_after_s)


def embed_body(model: str, texts: Sequence[str], dimensions: int | None, truncate: bool, keep_alive: str) -> Any:
    body: dict[str, object] = {"model": model, "input": list(texts), "truncate": truncate, "keep_alive": keep_alive}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


def read_embed(body: Any, expected: int, first: int, what: str) -> tuple[list[list[float]], int]:
    """The vectors of one /api/embed answer and its prompt token count."""
    vectors = body.get("embeddings") if isinstance(body, dict) else None
    if not isinstance(vectors, list):
        raise UpstreamProtocolError(f"{what}: upstream answer has no 'embeddings' list")
    return float_rows(vectors, expected, first, what), count(body, "prompt_eval_count")


def chat_body(req: ChatRequest, *, stream: bool, keep_alive: str) -> Any:
    options: dict[str, object] = {}
    if req.max_tokens is not None:
        options["num_predict"] = req.max_tokens
    if req.temperature is not None:
        options["temperature"] = req.temperature
    if req.stop:
        options["stop"] = list(req.stop)
    return {
        "model": req.model,
        "messages": [{"role": m.role, "content": m.content} for m in req.messages],
        "stream": stream,
        "options": options,
        "keep_alive": keep_alive,
    }


def read_chat(body: Any, what: str) -> tuple[dict[str, Any], str]:
    if not isinstance(body, dict):
        raise UpstreamProtocolError(f"{what}: upstream answer is not a JSON object")
    return body, content(body, what)


def content(body: Mapping[str, Any], what: str) -> str:
    message = body.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise UpstreamProtocolError(f"{what}: upstream answer has no message content")
    return text


def stream_item(line: str, what: str) -> dict[str, Any] | None:
    """One NDJSON chunk of a streamed chat; None for blank lines."""
    if not line.strip():
        return None
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(f"{what}: upstream stream carried a line that is not JSON") from exc
    if not isinstance(item, dict):
        raise UpstreamProtocolError(f"{what}: upstream stream carried a line that is not a JSON object")
    if "error" in item:
        # Redacted whole, then cut: a secret straddling the cut must not leak its head.
        detail = safe_detail(redact_tokens(str(item["error"])))
        raise UpstreamProtocolError(f"{what}: upstream failed mid-answer: {detail}")
    return item


def chat_result(
    model: str, body: Mapping[str, Any], text: str, elapsed_s: float, measured_ttft_s: float | None
) -> ChatResult:
    finish: FinishReason = "length" if body.get("done_reason") == "length" else "stop"
    usage = Usage(input_tokens=count(body, "prompt_eval_count"), output_tokens=count(body, "eval_count"))
    total_ns, eval_ns = count(body, "total_duration"), count(body, "eval_duration")
    ttft_ms = measured_ttft_s * 1000 if measured_ttft_s is not None else None
    if "prompt_eval_duration" in body:
        ttft_ms = (count(body, "load_duration") + count(body, "prompt_eval_duration")) / _NS_PER_MS
    timings = ChatTimings(
        total_ms=total_ns / _NS_PER_MS if total_ns else elapsed_s * 1000,
        time_to_first_token_ms=ttft_ms,
        tokens_per_second=usage.output_tokens / (eval_ns / 1e9) if eval_ns and usage.output_tokens else None,
    )
    return ChatResult(model=model, content=text, finish_reason=finish, usage=usage, timings=timings)


def tag_models(body: Any) -> list[ModelInfo]:
    """The models of an /api/tags answer, with capabilities read from name and family."""
    listed = body.get("models") if isinstance(body, dict) else None
    if not isinstance(listed, list):
        raise UpstreamProtocolError("ollama probe /api/tags: the answer has no model list")
    return [m for m in (_tag_model(item) for item in listed) if m is not None]


def _tag_model(item: object) -> ModelInfo | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    name: str = item["name"]
    details = item.get("details")
    family = details.get("family") if isinstance(details, dict) else None
    family = family if isinstance(family, str) else None
    caps = capabilities_from_name(name, family)
    return ModelInfo(name=name, capabilities=_ENCODER if "embed" in caps or "rerank" in caps else caps, family=family)


def version(answer: object) -> tuple[str | None, dict[str, str]]:
    if isinstance(answer, AdapterError):
        return None, {"version_error": safe_detail(str(answer))}
    value = answer.get("version") if isinstance(answer, dict) else None
    return (value, {}) if isinstance(value, str) else (None, {})


def count(body: object, key: str) -> int:
    value = body.get(key) if isinstance(body, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def cosines(vectors: Sequence[Sequence[float]]) -> list[float]:
    """Cosine of each document (rows 1..) with the query (row 0); vectors need not be normalised."""
    import numpy as np  # kept off the start-up path

    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0.0] = 1.0
    unit = matrix / norms[:, None]
    scores: list[float] = (unit[1:] @ unit[0]).tolist()
    return scores
