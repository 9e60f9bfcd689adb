"""Build a gateway over fake adapters, with manifests written to a temp dir."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from adapters.base import Adapter
from server.app import Gateway
from server.config import ServeOptions, Settings, load_settings


def write_manifests(
    root: Path,
    routes: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
    performance: Mapping[str, Any] | None = None,
    disable: tuple[str, ...] = ("mlx",),
) -> Path:
    """A user manifests dir; shipped adapters named in `disable` are switched off."""
    (root / "adapters").mkdir(parents=True, exist_ok=True)
    for name in disable:
        (root / "adapters" / f"{name}.json").write_text(json.dumps(disabled_adapter(name)))
    if routes is not None:
        (root / "routes.json").write_text(json.dumps(routes))
    if policy is not None:
        (root / "policy.json").write_text(json.dumps(policy))
    if performance is not None:
        (root / "performance-config.json").write_text(json.dumps(performance))
    return root


def disabled_adapter(name: str) -> dict[str, Any]:
    """A manifest that switches off a shipped adapter of that name."""
    if name == "mlx":
        return {
            "name": "mlx",
            "kind": "mlx",
            "enabled": False,
            "models": [{"name": "x", "capabilities": ["embed"], "role": "encoder", "path": "/nonexistent"}],
        }
    return {"name": name, "kind": "ollama", "enabled": False}


def settings_for(tmp: Path, *, load: Mapping[str, Any] | None = None, **manifests: Any) -> Settings:
    """Settings over manifests written under `tmp`; `load` holds the serve options (transport, port…)."""
    mdir = write_manifests(tmp / "manifests", **manifests)
    env = {"HOME": str(tmp), "MODEL_GATEWAY_AUDIT_KEY": "00" * 32}
    return load_settings(manifests_dir=mdir, serve=ServeOptions(**(load or {})), env=env)


@asynccontextmanager
async def serving_http(gateway: Gateway) -> AsyncIterator[str]:
    """The gateway's HTTP app as `serve` runs it, in this process, on its settings' loopback port; yields the URL."""
    import uvicorn

    from server.http_edge import http_app
    from server.http_server import uvicorn_config
    from tests.support.processes import wait_http

    server = uvicorn.Server(uvicorn_config(gateway.settings, http_app(gateway)))
    base = f"http://127.0.0.1:{gateway.settings.port}"
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await anyio.to_thread.run_sync(wait_http, base + "/health")
        try:
            yield base
        finally:
            server.should_exit = True


def fake_server(tmp: Path, adapters: Mapping[str, Adapter], **manifests: Any) -> tuple[Any, Gateway]:
    """The MCP server of a gateway over `adapters`, and the gateway (its `get()` is the running state)."""
    gateway = Gateway(settings_for(tmp, **manifests), adapters)
    return gateway.server, gateway
