"""AppState: what the lifespan builds and every tool call reads. Nothing here is global."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from adapters.base import Adapter
from server.audit import AuditLog
from server.batching import EmbedCoalescer
from server.client_logs import ClientLogs
from server.config import Settings
from server.discovery import Discovery
from server.policy import PolicyEngine
from server.ratelimit import RateLimiter
from server.redact import Redactor
from server.router import Router
from server.telemetry import Metrics


@dataclass(eq=False)
class AppState:
    settings: Settings
    adapters: dict[str, Adapter]
    discovery: Discovery
    router: Router
    coalescer: EmbedCoalescer
    policy: PolicyEngine
    audit: AuditLog
    metrics: Metrics
    limiter: RateLimiter
    redactor: Redactor
    client_logs: ClientLogs
    started_at: float = field(default_factory=time.time)
    in_flight: int = 0

    @property
    def privacy_mode(self) -> bool:
        return self.router.privacy_mode

    def set_privacy_mode(self, on: bool) -> None:
        """Filters the cached snapshot at once; discovery is not re-run."""
        self.router.privacy_mode = on
        self.discovery.privacy_mode = on
