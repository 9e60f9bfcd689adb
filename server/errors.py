"""The gateway exception tree. Every message is safe to show a model.

    GatewayError                 base; `code` is a stable, bounded label for metrics and audit
    +-- ConfigError              a manifest or setting is wrong (names file and field)
    +-- LimitError               a request exceeds a size or rate limit (names the limit)
    |   +-- RateLimitedError     a bucket is empty now (retryable: says when)
    |   +-- SharedStateUnavailableError  the shared buckets cannot be reached (retryable)
    +-- PolicyDeniedError        policy refused the call (names the rule)
    +-- NoRouteError             no candidate can serve the model/capability
    +-- AllCandidatesFailedError every candidate failed (lists each and why)
    +-- UpstreamRejectedError    a candidate rejected the request itself (not retryable)
    +-- AuditUnavailableError    the audit sink cannot write: calls are refused
    +-- InternalError            a bug; the message says so without internals

Adapter errors are translated at the router boundary with `raise ... from exc`.
"""

from __future__ import annotations


class GatewayError(Exception):
    code = "internal"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(GatewayError):
    code = "config"


class LimitError(GatewayError):
    code = "limit"


class RateLimitedError(LimitError):
    code = "rate_limited"
    retryable = True


class SharedStateUnavailableError(LimitError):
    """Rate limits live in shared state that cannot be reached, and the operator chose to refuse then."""

    code = "shared_state_unavailable"
    retryable = True


class PolicyDeniedError(GatewayError):
    code = "policy_denied"

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


class NoRouteError(GatewayError):
    code = "no_route"


class AllCandidatesFailedError(GatewayError):
    code = "all_failed"
    retryable = True


class UpstreamRejectedError(GatewayError):
    code = "upstream_rejected"


class AuditUnavailableError(GatewayError):
    code = "audit_unavailable"
    retryable = True


class InternalError(GatewayError):
    code = "internal"
