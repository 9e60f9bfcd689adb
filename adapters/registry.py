"""kind -> adapter class, imported lazily so an unused backend costs nothing.

MLX in particular is never imported unless a manifest of kind "mlx" is enabled.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from adapters.base import Adapter, AdapterContext
from adapters.manifest import AdapterManifest

_KINDS: dict[str, str] = {
    "ollama": "adapters.ollama:OllamaAdapter",
    "openai": "adapters.openai_compat:OpenAIAdapter",
    "mlx": "adapters.mlx_local:MLXAdapter",
    "mcp": "adapters.mcp_remote:MCPRemoteAdapter",
}

AdapterFactory = Callable[[AdapterManifest, AdapterContext], Adapter]


def adapter_class(kind: str) -> AdapterFactory:
    try:
        target = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown adapter kind {kind!r}; known: {', '.join(sorted(_KINDS))}") from None
    module_name, _, attr = target.partition(":")
    return cast(AdapterFactory, getattr(importlib.import_module(module_name), attr))


def create_adapter(manifest: AdapterManifest, context: AdapterContext) -> Adapter:
    """Build an adapter. Constructors must be cheap: no network, no model load."""
    return adapter_class(manifest.kind)(manifest, context)
