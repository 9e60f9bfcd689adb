"""What the `models` tool, `gateway://health` and `GET /health` report, from the live AppState.

Health speaks for the whole gateway, so it shows the operator's privacy mode; `models` answers a caller
and shows what that caller can route to under its own.
"""

from __future__ import annotations

from typing import Any

from adapters.types import CAPABILITIES, Capability
from server.errors import GatewayError
from server.router import Candidate
from server.schemas import ModelEntry, ModelsOutput
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


def health_report(state: AppState) -> dict[str, Any]:
    snap = state.discovery.snapshot
    adapters = {}
    for name, s in snap.adapters.items():
        breaker = state.router.breakers.get(name)
        adapters[name] = {
            "kind": s.kind,
            "privacy": s.privacy,
            "status": s.status,
            "latency_ms": s.latency_ms,
            "error": s.error,
            "last_probe": s.probed_at,
            "version": s.version,
            "breaker": breaker.state if breaker else None,
            "details": dict(s.details),
            "capabilities": sorted(s.capabilities),
            "models": [m.name for m in s.models],
        }
    serving = {cap: _can_serve(state, cap) for cap in CAPABILITIES}
    return {
        "status": "ok" if all(serving.values()) and state.audit.healthy else "degraded",
        "capabilities": serving,
        "snapshot": {"source": snap.source, "age_s": round(snap.age_s(), 3) if snap.created_at else None},
        "privacy_mode": state.privacy_mode,
        "policy": state.policy.summary(),
        "audit": {"ok": state.audit.healthy, "error": state.audit.error, "records": state.audit.records},
        "in_flight": state.in_flight,
        "adapters": adapters,
    }


def _can_serve(state: AppState, capability: Capability) -> bool:
    try:
        candidates = state.router.resolve(capability, None)
    except GatewayError:
        return False
    usable, _ = state.router.usable(capability, candidates, state.privacy_mode)
    return bool(usable)
