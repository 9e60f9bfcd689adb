"""How backends name models: canonical identity and capability by name.

Canonical identity: two spellings that reach the same model on a backend must
compare equal before anything (routing, policy, rate limits, audit, metrics)
compares them. Each adapter kind says how its backend names models through
`canonical_model(name)`; kinds without a rule keep names as given. Use the
module-level `canonical_model(adapter, name)`: it works for every adapter,
including ones that do not derive from the kit's base class.

Capability by name: backends that list models without saying what they serve
(Ollama's tags, OpenAI's /v1/models) are read by ONE rule, `capabilities_from_name`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from adapters.types import Capability

_EMBED: frozenset[Capability] = frozenset({"embed"})
_RERANK: frozenset[Capability] = frozenset({"rerank"})
_CHAT: frozenset[Capability] = frozenset({"chat"})
# Name fragments of embedding models as hubs publish them (e5-, bge-, gte-, MiniLM, nomic-embed, ...).
_EMBED_NAME = re.compile(r"embed|minilm|mpnet|(?:^|[/_:-])(?:bge|gte|e5)(?:[/_:-]|$)|sentence-t5|arctic-embed", re.I)
_RERANK_NAME = re.compile(r"rerank|cross-encoder", re.I)

OLLAMA_REGISTRY = "registry.ollama.ai/"
OLLAMA_NAMESPACE = "library/"
OLLAMA_DEFAULT_TAG = "latest"


@runtime_checkable
class NamesModels(Protocol):
    """An adapter whose backend has its own rule for which spellings name the same model."""

    def canonical_model(self, name: str) -> str: ...


def canonical_model(adapter: object, name: str) -> str:
    """The adapter's canonical spelling of `name` (idempotent); names are kept as given when it has no rule."""
    # a lookup, not isinstance(adapter, NamesModels): a runtime Protocol check costs ~10 us per call
    rule: Callable[[str], str] | None = getattr(adapter, "canonical_model", None)
    return rule(name) if callable(rule) else name


def canonical_for_kind(kind: str, name: str) -> str:
    """The canonical spelling of `name` on an adapter of `kind`, without building the adapter.

    For readers of manifests alone (`model-gateway policy explain`); adapters of each kind apply the
    same rule through their own `canonical_model`.
    """
    rule = _KIND_RULES.get(kind)
    return rule(name) if rule is not None else name


def capabilities_from_name(name: str, family: str | None = None) -> frozenset[Capability]:
    """What a listed model serves, read from its name (and family, where the backend reports one).

    Rerankers first (a 'bge-reranker' is not an embedder), then encoders (a family ending in 'bert'
    or an embedding model's name), and anything else chats.
    """
    if _RERANK_NAME.search(name):
        return _RERANK
    if (family or "").lower().endswith("bert") or _EMBED_NAME.search(name):
        return _EMBED
    return _CHAT


def ollama_model_name(name: str) -> str:
    """Ollama's identity: case-insensitive, default registry and namespace dropped, default tag added.

    `LLAMA3.2`, `library/llama3.2:latest` and `registry.ollama.ai/library/llama3.2` all become
    `llama3.2:latest`; `host:5000/team/model` keeps its registry (the port is not a tag).
    A digest reference (`model@sha256:...`) keeps its digest and gets no tag.
    """
    text = name.strip().lower()
    if not text:
        return text
    if text.startswith(OLLAMA_REGISTRY):
        text = text[len(OLLAMA_REGISTRY) :]
    if text.startswith(OLLAMA_NAMESPACE):
        text = text[len(OLLAMA_NAMESPACE) :]
    if "@" in text:
        return text
    last = text.rsplit("/", 1)[-1]
    return text if ":" in last else f"{text}:{OLLAMA_DEFAULT_TAG}"


_KIND_RULES: dict[str, Callable[[str], str]] = {"ollama": ollama_model_name}
