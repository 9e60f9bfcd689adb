"""Where the gateway keeps its files, from the environment alone (standard library only).

The stdio fast start reads its cache before anything heavy is imported, so these
live apart from `server.config`, which re-exports them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_cache_dir", "default_models_dir", "default_state_dir", "user_manifests_dir"]


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def default_cache_dir(env: Mapping[str, str]) -> Path:
    if env.get("MODEL_GATEWAY_CACHE_DIR"):
        return Path(env["MODEL_GATEWAY_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else _home(env) / ".cache"
    return base / "model-gateway"


def default_models_dir(env: Mapping[str, str]) -> Path:
    if env.get("MODEL_GATEWAY_MODELS_DIR"):
        return Path(env["MODEL_GATEWAY_MODELS_DIR"])
    return default_cache_dir(env) / "models"


def default_state_dir(env: Mapping[str, str]) -> Path:
    if env.get("MODEL_GATEWAY_STATE_DIR"):
        return Path(env["MODEL_GATEWAY_STATE_DIR"])
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else _home(env) / ".local" / "state"
    return base / "model-gateway"


def user_manifests_dir(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        return explicit
    if env.get("MODEL_GATEWAY_MANIFESTS"):
        return Path(env["MODEL_GATEWAY_MANIFESTS"])
    default = _home(env) / ".config" / "model-gateway" / "manifests"
    return default if default.is_dir() else None
