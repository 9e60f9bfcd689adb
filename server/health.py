"""What the `models` tool, `gateway://health` and `GET /health` report, from the live AppState.

Health speaks for the whole gateway, so it shows the operator's privacy mode; `models` answers a caller
and shows what that caller can route to under its own.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from adapters.base import Adapter, ReportsModelStates
from adapters.types import CAPABILITIES, Capability
from server.discovery import AdapterStatus
from server.errors import GatewayError
from server.router import Candidate
from server.schemas import ModelEntry, ModelsOutput
from server.session import SessionTable
from server.sharing import sharing_health
from server.state import AppState


def models_listing(state: AppState, privacy: bool) -> ModelsOutput:
    """Every model in the snapshot, routable or not under `privacy` (the caller's privacy mode)."""
    entries = []
    for name, s in state.discovery.snapshot.adapters.items():
        for m in s.models:
            reason = None
            for cap in sorted(m.capabilities):
                reason = state.router.skip_reason(cap, Candidate(name, m.name, s.privacy), privacy)
                if reason is None:
                    break
            entries.append(
                ModelEntry(
                    name=f"{name}/{m.name}",
                    adapter=name,
                    model=m.name,
                    capabilities=sorted(m.capabilities),
                    privacy=s.privacy,
                    status=s.status,
                    routable=reason is None,
                )
            )
    return ModelsOutput(models=entries, aliases=dict(state.router.routes.aliases), privacy_mode=privacy)


def health_report(state: AppState, sessions: SessionTable | None = None) -> dict[str, Any]:
    """The gateway as it is now: breakers, model states, sessions and call times are read live.

    `sessions`: the HTTP transports' session table; over stdio the one session is the state's own.
    """
    snap = state.discovery.snapshot
    now = time.time()
    adapters = {name: _adapter_health(state, s, now) for name, s in snap.adapters.items()}
    serving = {cap: _can_serve(state, cap) for cap in CAPABILITIES}
    shared_up = state.shared_state is None or state.shared_state.up is not False
    return {
        "status": "ok" if all(serving.values()) and state.audit.healthy and shared_up else "degraded",
        "capabilities": serving,
        "snapshot": {"source": snap.source, "age_s": round(snap.age_s(), 3) if snap.created_at else None},
        "privacy_mode": state.privacy_mode,
        "policy": state.policy.summary(),
        "audit": {"ok": state.audit.healthy, "error": state.audit.error, "records": state.audit.records},
        "in_flight": state.in_flight,
        "shared_state": sharing_health(state.shared_state, state.response_cache),
        "sessions": _sessions(state, sessions),
        "adapters": adapters,
    }


def _sessions(state: AppState, table: SessionTable | None) -> dict[str, Any]:
    if state.settings.transport == "stdio":
        local = state.local_session
        level = logging.getLevelName(local.log_level).lower()
        return {"transport": "stdio", "open": 1, "privacy_on": int(local.privacy), "log_level": level}
    if state.settings.stateless or table is None:
        return {"transport": state.settings.transport, "open": 0, "stateless": True}
    return {"transport": state.settings.transport, **table.summary()}


def _adapter_health(state: AppState, s: AdapterStatus, now: float) -> dict[str, Any]:
    breaker = state.router.breakers.get(s.name)
    served, failed = state.discovery.last_served.get(s.name), state.discovery.last_failed.get(s.name)
    return {
        "kind": s.kind,
        "privacy": s.privacy,
        "status": s.status,
        "latency_ms": s.latency_ms,
        "error": s.error,
        "last_probe": s.probed_at,
        "last_probe_age_s": _age(s.probed_at, now),
        "last_served": served,
        "last_served_age_s": _age(served, now),
        "last_failed": failed,
        "version": s.version,
        "breaker": breaker.state_now if breaker else None,
        "breaker_retry_in_s": round(breaker.retry_in_s(), 3) if breaker and breaker.blocking else None,
        "details": dict(s.details),
        "capabilities": sorted(s.capabilities),
        "models": [m.name for m in s.models],
        "model_states": _model_states(state.adapters.get(s.name), s),
    }


def _model_states(adapter: Adapter | None, s: AdapterStatus) -> dict[str, dict[str, str | None]]:
    """Live states from an adapter that holds its models; for a server's models, what its last probe saw."""
    if isinstance(adapter, ReportsModelStates):
        live = adapter.model_states()
        return {name: {"state": st, "error": err} for name, (st, err) in live.items()}
    found: dict[str, dict[str, str | None]] = {}
    for m in s.models:
        if s.status == "unknown":
            found[m.name] = {"state": "unknown", "error": None}
        elif s.status == "down" or m.name in s.unlisted:
            found[m.name] = {"state": "failed", "error": s.error or "not listed by the server"}
        else:
            found[m.name] = {"state": "ready", "error": None}
    return found


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else round(max(0.0, now - at), 3)


def _can_serve(state: AppState, capability: Capability) -> bool:
    try:
        candidates = state.router.resolve(capability, None)
    except GatewayError:
        return False
    usable, _ = state.router.usable(capability, candidates, state.privacy_mode)
    return bool(usable)
