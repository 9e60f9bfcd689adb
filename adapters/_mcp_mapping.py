"""Capability <-> downstream tool mapping for the remote-MCP adapter.

Building arguments: a mapping names, per downstream argument, the gateway field
whose value it takes. Reading results: the value at the mapping's dotted
`result` path (or the whole structured result) is read in the shapes a model
gateway returns, which also covers plain lists and strings.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from adapters._vectors import float_rows
from adapters.base import ModelInfo
from adapters.errors import UpstreamProtocolError
from adapters.manifest import MCP_GATEWAY_FIELDS, MODEL_NAME
from adapters.types import (
    CAPABILITIES,
    Capability,
    ChatRequest,
    EmbedRequest,
    FinishReason,
    RerankRequest,
    RerankScore,
    Usage,
)

GATEWAY_FIELDS = MCP_GATEWAY_FIELDS
# A downstream lists at most this many models; names follow the manifests' model-name rule.
MAX_LEARNED_MODELS = 512
_MODEL_NAME = re.compile(MODEL_NAME)


def gateway_values(req: ChatRequest | EmbedRequest | RerankRequest) -> dict[str, Any]:
    """Every gateway field of a request, as JSON-ready values (None: leave the argument out)."""
    if isinstance(req, EmbedRequest):
        return {"input": list(req.texts), "texts": list(req.texts), "model": req.model, "dimensions": req.dimensions}
    if isinstance(req, RerankRequest):
        return {"query": req.query, "documents": list(req.documents), "top_n": req.top_n, "model": req.model}
    return {
        "messages": [{"role": m.role, "content": m.content} for m in req.messages],
        "model": req.model,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "stop": list(req.stop) or None,
    }


def default_arguments(capability: Capability, schema_properties: Sequence[str]) -> dict[str, str]:
    """Same-name mapping for a downstream that is itself a model gateway: pass what its schema lists."""
    listed = set(schema_properties)
    return {name: name for name in sorted(GATEWAY_FIELDS[capability]) if name in listed}


def build_arguments(mapping: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, Any]:
    return {arg: values[field] for arg, field in mapping.items() if values.get(field) is not None}


def structured_value(structured: Any, text: str | None, path: str | None) -> Any:
    """The structured result (or JSON in the first text block) at a dotted path."""
    value = structured
    if value is None and text is not None:
        try:
            value = orjson.loads(text)
        except ValueError:
            value = text
    for key in path.split(".") if path else ():
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise UpstreamProtocolError(f"downstream result has nothing at '{path}'")
    return value


def read_usage(value: Any) -> Usage:
    usage = value.get("usage") if isinstance(value, Mapping) else None
    if not isinstance(usage, Mapping):
        return Usage()
    return Usage(input_tokens=_int(usage.get("input_tokens")), output_tokens=_int(usage.get("output_tokens")))


def read_vectors(value: Any, count: int, first: int = 0) -> list[list[float]]:
    """`count` vectors of finite floats; widths are the kit's to check (adapters/_vectors.py)."""
    vectors: Any = value
    if isinstance(value, Mapping):
        vectors = value.get("embeddings")
        if vectors is None and isinstance(value.get("embeddings_b64"), str):
            vectors = _decode_b64(value["embeddings_b64"], _int(value.get("dimensions")))
    return float_rows(vectors, count, first, "downstream embed")


def read_model_listing(value: Any) -> tuple[ModelInfo, ...]:
    """The models a downstream model gateway lists (its `models` tool): routable name and capabilities."""
    items = value.get("models") if isinstance(value, Mapping) else None
    found: dict[str, ModelInfo] = {}
    for item in items if isinstance(items, list) else ():
        name = item.get("name") if isinstance(item, Mapping) else None
        caps = item.get("capabilities") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or not isinstance(caps, list):
            continue
        served = frozenset(c for c in CAPABILITIES if c in caps)
        if served and item.get("status") != "down":
            found.setdefault(name, ModelInfo(name=name, capabilities=served))
        if len(found) >= MAX_LEARNED_MODELS:
            break
    return tuple(found.values())


def read_scores(value: Any, documents: int) -> list[RerankScore]:
    items = value.get("results") if isinstance(value, Mapping) else value
    if not isinstance(items, list):
        raise UpstreamProtocolError("downstream rerank result has no list of scores")
    scores: list[RerankScore] = []
    for item in items:
        index = item.get("index") if isinstance(item, Mapping) else None
        score = item.get("relevance_score", item.get("score")) if isinstance(item, Mapping) else None
        if not isinstance(index, int) or not 0 <= index < documents or not isinstance(score, int | float):
            raise UpstreamProtocolError("downstream rerank result has an entry without a valid index and score")
        scores.append(RerankScore(index=index, relevance_score=float(score)))
    return scores


def read_chat(value: Any) -> tuple[str, FinishReason]:
    if isinstance(value, str):
        return value, "stop"
    if isinstance(value, Mapping):
        message = value.get("message")
        content = message.get("content") if isinstance(message, Mapping) else value.get("content", value.get("text"))
        if isinstance(content, str):
            reason = value.get("finish_reason")
            return content, reason if reason in ("stop", "length", "cancelled", "error") else "stop"
    raise UpstreamProtocolError("downstream chat result has no message content")


def _decode_b64(data: str, dimensions: int) -> list[list[float]]:
    try:
        flat = np.frombuffer(base64.b64decode(data, validate=True), dtype="<f4")
    except ValueError as exc:
        raise UpstreamProtocolError("downstream embeddings_b64 is not packed float32") from exc
    if dimensions <= 0 or flat.size % dimensions:
        raise UpstreamProtocolError("downstream embeddings_b64 does not match its dimensions")
    return [row.tolist() for row in flat.reshape(-1, dimensions).astype(np.float64)]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
