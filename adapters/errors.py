"""The adapter exception tree.

    AdapterError                    base; `retryable` tells the router whether the next
    |                               candidate may succeed where this one failed
    +-- AdapterUnavailableError     connection refused/reset, DNS, process gone   (retryable)
    +-- AdapterTimeoutError         deadline or read timeout                     (retryable)
    +-- UpstreamStatusError         HTTP status; 429 and 5xx retryable, other 4xx not
    +-- UpstreamProtocolError       malformed body, wrong vector count, bad shape (retryable)
    +-- ModelNotFoundError          the adapter does not serve that model        (not retryable)
    +-- ModelLoadError              local weights missing or unreadable          (retryable)
    +-- CapabilityError             the adapter does not declare the capability  (not retryable)
    +-- InvalidRequestError         the request itself is wrong for this backend (not retryable)

Every message must be safe to show a model: no secrets, no credentials in
URLs, no stack traces, bounded length.
"""

from __future__ import annotations

_MAX_DETAIL = 300


def safe_detail(text: str, limit: int = _MAX_DETAIL) -> str:
    """Collapse whitespace and cut provider text to a bounded, single-line detail."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class AdapterError(Exception):
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class AdapterUnavailableError(AdapterError):
    retryable = True


class AdapterTimeoutError(AdapterError):
    retryable = True


class UpstreamStatusError(AdapterError):
    def __init__(self, status: int, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, retryable=status == 429 or status >= 500)
        self.status = status
        self.retry_after_s = retry_after_s


class UpstreamProtocolError(AdapterError):
    retryable = True


class ModelNotFoundError(AdapterError):
    retryable = False


class ModelLoadError(AdapterError):
    retryable = True


class CapabilityError(AdapterError):
    retryable = False


class InvalidRequestError(AdapterError):
    retryable = False
