"""AppState: everything long-lived that tool calls read, and `open_state()`, the one place it is built.

Nothing here is global: each `open_state()` builds its own adapters, registry,
caches and background work, and closes them on exit. Which transport holds it
open is decided by `server.app.Gateway.running()`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import anyio

from adapters.base import Adapter, TaskOwner
from adapters.registry import create_adapter
from server.audit import AuditLog
from server.batching import Coalescer, CoalescingAdapter
from server.breaker import Breaker
from server.client_logs import ClientLogs
from server.config import Settings
from server.discovery import Discovery
from server.governance import open_audit, redactor_for
from server.policy import PolicyEngine
from server.ratelimit import Limiter
from server.redact import Redactor, redacted_logs
from server.response_cache import ResponseCache
from server.router import AttemptRules, Router
from server.session import SessionState
from server.shared_state import SharedState
from server.sharing import sharing
from server.shedding import Shedder
from server.telemetry import Metrics

log = logging.getLogger("model_gateway")


@dataclass(eq=False)
class AppState:
    settings: Settings
    adapters: dict[str, Adapter]
    discovery: Discovery
    router: Router
    coalescer: Coalescer
    policy: PolicyEngine
    audit: AuditLog
    metrics: Metrics
    limiter: Limiter
    redactor: Redactor
    shedder: Shedder
    client_logs: ClientLogs  # log notifications to each session at its own level
    response_cache: ResponseCache
    shared_state: SharedState | None = None  # Redis, when replicas share limits and the cache
    # stdio serves one client: its session lives here rather than in the HTTP session table
    local_session: SessionState = field(default_factory=SessionState)
    started_at: float = field(default_factory=time.time)

    @property
    def in_flight(self) -> int:
        return self.shedder.in_flight

    @property
    def privacy_mode(self) -> bool:
        """The operator's privacy mode: process-wide, set at start, never lifted by a client."""
        return self.settings.privacy_mode

    async def write_audit(self, record: dict[str, Any]) -> None:
        """A non-durable record, synced with the next durable one (the shedder's summaries)."""
        await self.audit.write(record, durable=False)
        self.metrics.child(self.metrics.audit_records, str(record["event"])).inc()


def build_adapters(settings: Settings, tasks: TaskOwner | None = None) -> dict[str, Adapter]:
    context = settings.adapter_context() if tasks is None else replace(settings.adapter_context(), tasks=tasks)
    return {m.name: create_adapter(m, context) for m in settings.manifests.adapters}


def _router(
    settings: Settings, discovery: Discovery, adapters: Mapping[str, Adapter], metrics: Metrics, redactor: Redactor
) -> Router:
    perf = settings.manifests.performance
    breakers = {n: Breaker(perf.breaker, partial(metrics.breaker_changed, n)) for n in adapters}
    aliases = {m.name: {a: spec.name for spec in m.models for a in spec.aliases} for m in settings.manifests.adapters}
    return Router(
        adapters,
        settings.manifests.routes,
        discovery,
        breakers,
        aliases,
        AttemptRules(redact=redactor.text, unprobed_s=perf.deadlines.unprobed_s),
    )


@asynccontextmanager
async def open_state(settings: Settings, adapters: Mapping[str, Adapter] | None = None) -> AsyncIterator[AppState]:
    """Build every long-lived piece, run background work in one task group, close all on exit.

    `adapters` replaces the ones the manifests describe (tests inject fakes through this seam).
    """
    perf = settings.manifests.performance
    metrics = Metrics()
    tasks = anyio.create_task_group()  # entered below: adapters' background work runs and is cancelled with it
    adapters = dict(adapters) if adapters is not None else build_adapters(settings, tasks)
    discovery = Discovery(adapters, perf.discovery, settings.snapshot_path, metrics.observe_probe)
    discovery.privacy_mode = settings.privacy_mode  # the operator's mode: remote adapters are not even probed
    if settings.use_discovery_cache:
        discovery.load_cache()
    redactor = redactor_for(settings)
    audit = open_audit(settings, redactor)
    async with AsyncExitStack() as stack:
        stack.enter_context(redacted_logs(redactor))
        stack.push_async_callback(_close_adapters, adapters)
        stack.push_async_callback(audit.aclose)
        coalescer = await stack.enter_async_context(Coalescer(perf.batching, metrics.observe_batch))
        shared = await stack.enter_async_context(sharing(settings, metrics.registry))
        tg = await stack.enter_async_context(tasks)
        coalescing = {n: CoalescingAdapter(a, coalescer) for n, a in adapters.items()}
        router = _router(settings, discovery, coalescing, metrics, redactor)
        state = AppState(
            settings=settings,
            adapters=adapters,
            discovery=discovery,
            router=router,
            coalescer=coalescer,
            # a rule names a model as its users spell it; the router's namer makes every spelling one model
            policy=PolicyEngine(settings.manifests.policy, namer=router.canonical),
            audit=audit,
            metrics=metrics,
            limiter=shared.limiter,
            redactor=redactor,
            shedder=Shedder(perf.concurrency.max_in_flight),
            client_logs=ClientLogs(redactor, max_sessions=perf.http_server.max_sessions),
            local_session=SessionState(principal=settings.principal),
            response_cache=shared.cache,
            shared_state=shared.shared,
        )
        stack.push_async_callback(state.shedder.flush, state.write_audit)
        tg.start_soon(discovery.run)
        tg.start_soon(state.client_logs.run)
        if shared.shared is not None:
            tg.start_soon(shared.shared.run)  # pings Redis, so health sees it come and go without traffic
        try:
            yield state
        finally:
            tg.cancel_scope.cancel()


async def _close_adapters(adapters: dict[str, Adapter]) -> None:
    with anyio.CancelScope(shield=True):
        for name, adapter in adapters.items():
            try:
                with anyio.fail_after(10):
                    await adapter.aclose()
            except Exception as exc:  # closing one adapter must not leak the others
                log.warning("adapter %s did not close cleanly: %s", name, type(exc).__name__)
