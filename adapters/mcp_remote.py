"""Remote-MCP adapter: serve chat/embed/rerank through another MCP server's tools.

One client session per downstream, opened lazily on first use, reused by every
call, and run by a dedicated task (see adapters/_mcp_session.py). The tool list
is cached on disk (mcp-tools-<name>.json under the cache dir) for the server's
`ttlMs` hint or the manifest's `tools_ttl_s`; it is relisted whenever a session
opens, so a server that comes back after being down, or that changed a mapped
tool's schema, is noticed before the next call is sent.

Models: the manifest's `models` when it lists any. Otherwise the adapter learns
them from the downstream: one model per mapped tool, named after the tool (a
call to it sends no `model`, so the downstream uses its own default), plus, once
a session is open, every model the downstream's `models` tool lists when it is a
model gateway. So a manifest with only `name`, `kind` and `command` serves calls.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client._transport import Transport, TransportStreams
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, TextContent
from pydantic import ValidationError

from adapters import _mcp_mapping as mapping_io
from adapters._http import build_client, redact_tokens, redact_url
from adapters._mcp_catalog import Binding, Catalog, catalog_from_listing, load_catalog, save_catalog
from adapters._mcp_session import DownstreamSession
from adapters.base import AdapterContext, AdapterInfo, ModelInfo, ProbeResult
from adapters.errors import (
    AdapterError,
    AdapterTimeoutError,
    AdapterUnavailableError,
    UpstreamProtocolError,
    safe_detail,
)
from adapters.kit import AdapterBase, declared_models, pinned_dimensions
from adapters.manifest import MCPManifest, MCPToolMapping
from adapters.types import (
    CAPABILITIES,
    Capability,
    ChatRequest,
    ChatResult,
    ChatTimings,
    EmbedRequest,
    EmbedResult,
    RerankRequest,
    RerankResult,
)

_MAX_LIST_PAGES = 20
# The downstream tool that lists a model gateway's models.
_MODELS_TOOL = "models"
# An isError text that reads like an outage lets the router try the next candidate.
_TRANSIENT = re.compile(r"timed? ?out|unavailable|overloaded|busy|try again|rate.?limit|temporar", re.IGNORECASE)


class MCPRemoteAdapter(AdapterBase):
    kind = "mcp"
    embed_concurrency = 4
    # Closing waits for the downstream process to exit (its own shutdown grace included).
    close_grace_s = 30.0

    def __init__(self, manifest: MCPManifest, context: AdapterContext) -> None:
        self._manifest = manifest
        self._context = context
        self._cache_name = f"mcp-tools-{manifest.name}.json"
        self._lock = anyio.Lock()
        self._session: DownstreamSession | None = None
        self._retired: list[DownstreamSession] = []
        self._catalog: Catalog | None = None
        self._catalog_loaded = False
        self._learned: tuple[ModelInfo, ...] = ()
        endpoint = redact_url(manifest.url) if manifest.url else f"stdio:{Path((manifest.command or ['?'])[0]).name}"
        info = AdapterInfo(
            manifest.name, "mcp", manifest.privacy, _declared(manifest), declared_models(manifest.models), endpoint
        )
        super().__init__(info, context, pinned=pinned_dimensions(manifest.models))
        # Routable from the first call, before any probe: a manifest without models serves the tool-named ones.
        self._show(self._models(info.capabilities))

    # --- the Adapter protocol -------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """Cheap: the cached tool list, or the open session's; never opens a session (that is the first call's job)."""
        try:
            catalog = await self._cached_catalog()
            source = "cache"
            if catalog is None or not catalog.fresh():
                if self._session is None or not self._session.usable:
                    return self._unopened("not opened yet: opens on the first call")
                if self._lock.locked():  # a call is opening or relisting it: report, never queue behind it
                    return self._unopened("opening")
                _, catalog = await self._ready()
                source = "live"
        except AdapterError as exc:
            return ProbeResult(ok=False, error=exc.message)
        return self._probe_result(catalog, source)

    def _unopened(self, session: str) -> ProbeResult:
        details = {"session": session}
        if not self._manifest.models:
            details["models"] = "named after the downstream's tools until a session lists them"
        return ProbeResult(ok=True, models=self._show(self._models(self.info.capabilities)), details=details)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        async def send(texts: Sequence[str], first: int) -> tuple[list[list[float]], int]:
            chunk = EmbedRequest(model=req.model, texts=tuple(texts), dimensions=req.dimensions)
            value = await self._call("embed", chunk)
            return mapping_io.read_vectors(value, len(texts), first), mapping_io.read_usage(value).input_tokens

        return await self.embed_in_chunks(req, send)

    async def rerank(self, req: RerankRequest) -> RerankResult:
        self.require("rerank")
        value = await self._call("rerank", req)
        scores = sorted(mapping_io.read_scores(value, len(req.documents)), key=lambda s: (-s.relevance_score, s.index))
        cut = scores[: req.top_n] if req.top_n is not None else scores
        usage = mapping_io.read_usage(value)
        return RerankResult(model=req.model, results=tuple(cut), method="upstream", usage=usage)

    async def chat(self, req: ChatRequest) -> ChatResult:
        self.require("chat")
        started = time.perf_counter()
        value = await self._call("chat", req)
        content, finish = mapping_io.read_chat(value)
        timings = ChatTimings(total_ms=(time.perf_counter() - started) * 1000.0)
        return ChatResult(
            model=req.model, content=content, finish_reason=finish, usage=mapping_io.read_usage(value), timings=timings
        )

    async def _release(self) -> None:
        """Close the sessions and wait until the downstream (and any child process) is gone."""
        async with self._lock:
            sessions = [*self._retired, *([self._session] if self._session else [])]
            self._session = None
            self._retired = []
        for session in sessions:
            await session.aclose()

    # --- models -------------------------------------------------------------------

    def _models(self, usable: frozenset[Capability]) -> tuple[ModelInfo, ...]:
        """The manifest's models, or the tool-named defaults and the models learned from the downstream."""
        if self._manifest.models:
            pool: tuple[ModelInfo, ...] = self.info.models
        else:
            by_tool: dict[str, set[Capability]] = {}
            for capability in sorted(self.info.capabilities):
                by_tool.setdefault(self._mapping(capability).tool, set()).add(capability)
            defaults = tuple(ModelInfo(name=tool, capabilities=frozenset(caps)) for tool, caps in by_tool.items())
            pool = defaults + tuple(m for m in self._learned if m.name not in by_tool)
        return tuple(replace(m, capabilities=m.capabilities & usable) for m in pool if m.capabilities & usable)

    def _show(self, models: tuple[ModelInfo, ...]) -> tuple[ModelInfo, ...]:
        """Without manifest models, what the adapter describes follows what it last saw of the downstream."""
        if not self._manifest.models:
            self.info = replace(self.info, models=models)
        return models

    def _is_default_model(self, model: str) -> bool:
        return not self._manifest.models and any(self._mapping(c).tool == model for c in self.info.capabilities)

    async def _learn(self, client: Client, catalog: Catalog) -> None:
        """Models a downstream gateway lists through its `models` tool; nothing learned is not an error."""
        if self._manifest.models or _MODELS_TOOL not in catalog.tools:
            return
        bound = self.limits.probe_deadline_s  # a listing is cheap; a slow one must not hold up the first call
        try:
            with anyio.fail_after(bound):
                result = await client.call_tool(_MODELS_TOOL, {}, read_timeout_seconds=bound)
            value = mapping_io.structured_value(result.structured_content, _first_text(result), None)
        except (MCPError, RuntimeError, ValidationError, TimeoutError, UpstreamProtocolError):
            return
        if not result.is_error:
            self._learned = mapping_io.read_model_listing(value)

    async def _ready(self) -> tuple[Client, Catalog]:
        """The open client and a fresh catalog; opens (or reopens) the session under the lock."""
        async with self._lock:
            if self._closed:
                raise AdapterUnavailableError(f"{self.describe}: adapter is closed")
            session, opened = self._session, False
            if session is None or not session.usable:
                session, opened = self._open(), True
            client = await session.client()
            catalog = self._catalog
            if opened or catalog is None or not catalog.fresh():
                catalog = await self._relist(client)
                await self._learn(client, catalog)
            return client, catalog

    def _open(self) -> DownstreamSession:
        if self._session is not None:
            self._session.drop()
            self._retired = [s for s in self._retired if not s.finished] + [self._session]
        session = DownstreamSession(
            self._transport, self._context.tasks, open_timeout_s=self._manifest.open_timeout_s, describe=self.describe
        )
        session.start()
        self._session = session
        return session

    def _transport(self) -> Transport:
        m = self._manifest
        if m.command is not None:
            params = StdioServerParameters(command=m.command[0], args=m.command[1:], env=dict(m.env), cwd=m.cwd)
            # stderr, never stdout: a stdio gateway's stdout carries JSON-RPC only.
            return stdio_client(params, errlog=sys.stderr)
        return _http_transport(m.url or "", self._http_headers(), self._context)

    def _http_headers(self) -> dict[str, str]:
        env = self._manifest.bearer_token_env
        secret = self._context.secrets.get(env) if env else None
        return {"Authorization": f"Bearer {secret.get_secret_value()}"} if secret is not None else {}

    async def _cached_catalog(self) -> Catalog | None:
        if not self._catalog_loaded:
            self._catalog = await load_catalog(self._context.cache, self._cache_name)
            self._catalog_loaded = True
        return self._catalog

    async def _relist(self, client: Client) -> Catalog:
        previous = await self._cached_catalog()
        tools: list[tuple[str, dict[str, Any]]] = []
        cursor: str | None = None
        ttl_ms = 0
        with anyio.move_on_after(self._context.limits.read_timeout_s) as scope:
            for _ in range(_MAX_LIST_PAGES):
                try:
                    page = await client.list_tools(cursor=cursor, cache_mode="refresh")
                except MCPError as exc:
                    raise self._mcp_error(exc, "tools/list", self._session) from exc
                tools.extend((t.name, t.input_schema) for t in page.tools)
                ttl_ms = ttl_ms or page.ttl_ms
                cursor = page.next_cursor
                if cursor is None:
                    break
        if scope.cancelled_caught:
            raise AdapterTimeoutError(f"{self.describe}: tools/list did not answer in time")
        ttl_s = ttl_ms / 1000.0 if ttl_ms > 0 else self._manifest.tools_ttl_s
        catalog = catalog_from_listing(tools, ttl_s, previous)
        for capability in self.info.capabilities:
            catalog = catalog.accept(capability, self._mapping(capability))
        self._catalog = catalog
        await save_catalog(self._context.cache, self._cache_name, catalog)
        return catalog

    def _mapping(self, capability: Capability) -> MCPToolMapping:
        return self._manifest.tools.get(capability) or MCPToolMapping.model_validate({"tool": capability})

    def _bind(self, capability: Capability, catalog: Catalog) -> Binding:
        mapping = self._mapping(capability)
        problem = catalog.problem(capability, mapping, self.describe)
        if problem is not None:
            raise problem
        entry = catalog.tools[mapping.tool]
        arguments = mapping.arguments or mapping_io.default_arguments(capability, entry.properties)
        return Binding(tool=mapping.tool, arguments=arguments, result=mapping.result)

    def _probe_result(self, catalog: Catalog, source: str) -> ProbeResult:
        details = {"source": source, "tools": safe_detail(self._redact(",".join(sorted(catalog.tools))))}
        problems: list[str] = []
        usable: set[Capability] = set()
        for capability in sorted(self.info.capabilities):
            problem = catalog.problem(capability, self._mapping(capability), self.describe)
            if problem is None:
                usable.add(capability)
            else:
                details[f"disabled.{capability}"] = problem.message
                problems.append(problem.message)
        if self._learned and not self._manifest.models:
            details["models"] = f"{len(self._learned)} listed by the downstream's models tool"
        models = self._show(self._models(frozenset(usable)))
        return ProbeResult(ok=bool(usable), models=models, error="; ".join(problems) or None, details=details)

    # --- calls --------------------------------------------------------------------

    async def _call(self, capability: Capability, req: ChatRequest | EmbedRequest | RerankRequest) -> Any:
        client, catalog = await self._ready()
        # Taken before any await: a lost connection must retire this session, not a newer one.
        session = self._session
        binding = self._bind(capability, catalog)
        values = mapping_io.gateway_values(req)
        if self._is_default_model(req.model):
            values["model"] = None  # a tool-named model: the downstream picks its own default
        arguments = mapping_io.build_arguments(binding.arguments, values)
        try:
            result = await client.call_tool(
                binding.tool, arguments, read_timeout_seconds=self._context.limits.read_timeout_s
            )
        except MCPError as exc:
            raise self._mcp_error(exc, binding.tool, session) from exc
        except (RuntimeError, ValidationError) as exc:
            raise UpstreamProtocolError(f"{self.describe}: tool '{binding.tool}' sent a malformed result") from exc
        text = _first_text(result)
        if result.is_error:
            detail = safe_detail(self._redact(text or "no detail"))
            retryable = bool(_TRANSIENT.search(detail))
            raise AdapterError(f"{self.describe}: tool '{binding.tool}' failed: {detail}", retryable=retryable)
        return mapping_io.structured_value(result.structured_content, text, binding.result)

    def _mcp_error(self, exc: MCPError, what: str, session: DownstreamSession | None) -> AdapterError:
        if exc.code == CONNECTION_CLOSED:
            if session is not None:
                session.drop()
            return AdapterUnavailableError(f"{self.describe}: connection to the downstream was lost during '{what}'")
        if exc.code == REQUEST_TIMEOUT:
            return AdapterTimeoutError(f"{self.describe}: '{what}' timed out downstream")
        return AdapterError(f"{self.describe}: downstream rejected '{what}': {safe_detail(self._redact(exc.message))}")

    def _redact(self, text: str) -> str:
        """Downstream text with the bearer token (if any) removed, in case the server echoes it."""
        env = self._manifest.bearer_token_env
        secret = self._context.secrets.get(env) if env else None
        value = secret.get_secret_value() if secret is not None else ""
        return redact_tokens(text.replace(value, "[redacted]") if value else text)


def _declared(manifest: MCPManifest) -> frozenset[Capability]:
    declared = set(manifest.tools) | {c for m in manifest.models for c in m.capabilities}
    return frozenset(declared) if declared else frozenset(CAPABILITIES)


def _first_text(result: CallToolResult) -> str | None:
    for block in result.content:
        if isinstance(block, TextContent):
            return block.text
    return None


@asynccontextmanager
async def _http_session_transport(
    url: str, headers: dict[str, str], context: AdapterContext
) -> AsyncIterator[TransportStreams]:
    async with (
        build_client(url, context.limits, headers=headers) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


def _http_transport(url: str, headers: dict[str, str], context: AdapterContext) -> Transport:
    transport: Transport = _http_session_transport(url, headers, context)
    return transport
