"""The one module that imports httpx2: a pooled client factory and error mapping.

HTTP adapters build ONE client here for their lifetime (building one costs
~26 ms; a request on a warm keep-alive connection under 1 ms) and translate
every httpx2 failure into the adapter error tree with `raise ... from exc`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import httpx2
import orjson

from adapters.base import AdapterLimits
from adapters.errors import (
    AdapterError,
    AdapterTimeoutError,
    AdapterUnavailableError,
    UpstreamProtocolError,
    UpstreamStatusError,
    safe_detail,
)

# Clients built so far, per process: benchmarks and tests read it to prove
# that no client is built per request.
CLIENTS_BUILT = 0


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """scheme://host:port/path with any userinfo and query removed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def build_client(
    base_url: str,
    limits: AdapterLimits,
    *,
    headers: Mapping[str, str] | None = None,
    http2: bool = False,
) -> httpx2.AsyncClient:
    """A keep-alive pooled client. TLS verification is always on for https; env proxies are ignored.

    A plain-http base URL (a local Ollama, a loopback server) gets no CA bundle: loading one costs
    ~25 ms, paid on the event loop while the first probe runs, and no TLS is ever negotiated — every
    request goes to a path under the base URL and redirects are not followed.
    """
    global CLIENTS_BUILT
    CLIENTS_BUILT += 1
    tls = urlsplit(base_url).scheme.lower() != "http"
    return httpx2.AsyncClient(
        base_url=base_url,
        headers=dict(headers or {}),
        http2=http2 and _h2_available(),
        verify=tls,
        follow_redirects=False,
        trust_env=False,
        timeout=httpx2.Timeout(limits.read_timeout_s, connect=limits.connect_timeout_s),
        limits=httpx2.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry_s,
        ),
    )


def _h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def map_transport_error(exc: httpx2.HTTPError, what: str) -> AdapterError:
    """Translate an httpx2 exception; the message names the operation, never the URL's secrets."""
    if isinstance(exc, httpx2.TimeoutException):
        return AdapterTimeoutError(f"{what}: upstream timed out ({type(exc).__name__})")
    if isinstance(exc, httpx2.ConnectError | httpx2.NetworkError | httpx2.RemoteProtocolError):
        return AdapterUnavailableError(f"{what}: upstream unreachable ({type(exc).__name__})")
    return AdapterUnavailableError(f"{what}: HTTP failure ({type(exc).__name__})")


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def status_error(response: httpx2.Response, what: str) -> UpstreamStatusError:
    """An UpstreamStatusError carrying the provider's message, made safe to show."""
    detail = _provider_message(response)
    msg = f"{what}: upstream returned HTTP {response.status_code}"
    if detail:
        msg += f": {detail}"
    return UpstreamStatusError(
        response.status_code, msg, retry_after_s=retry_after_seconds(response.headers.get("retry-after"))
    )


def _provider_message(response: httpx2.Response) -> str:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return safe_detail(response.text[:2000]) if response.text else ""
    if isinstance(body, dict):
        err = body.get("error", body.get("message", body.get("detail")))
        if isinstance(err, dict):
            err = err.get("message", "")
        if isinstance(err, str):
            return safe_detail(err)
    return ""


def json_body(response: httpx2.Response, what: str) -> Any:
    """Parse a 2xx JSON body or raise UpstreamProtocolError."""
    try:
        return orjson.loads(response.content)  # 4-5x the stdlib on large vector payloads
    except (ValueError, UnicodeDecodeError) as exc:
        raise UpstreamProtocolError(f"{what}: upstream sent a body that is not JSON") from exc


# --- request helpers, so adapter modules never import httpx2 themselves ------

HTTPClient: TypeAlias = httpx2.AsyncClient
HTTPResponse: TypeAlias = httpx2.Response


async def send_json(
    client: httpx2.AsyncClient, method: str, path: str, what: str, payload: object | None = None
) -> httpx2.Response:
    """One request with its body read in full; transport failures become adapter errors."""
    try:
        return await client.request(method, path, json=payload)
    except httpx2.HTTPError as exc:
        raise map_transport_error(exc, what) from exc


@asynccontextmanager
async def open_stream(
    client: httpx2.AsyncClient, method: str, path: str, what: str, payload: object | None = None
) -> AsyncIterator[httpx2.Response]:
    """A streamed response, closed on exit and on cancellation.

    Transport failures raised while the block reads the body become adapter errors too.
    """
    try:
        async with client.stream(method, path, json=payload) as response:
            yield response
    except httpx2.HTTPError as exc:
        raise map_transport_error(exc, what) from exc


# --- helpers that let an adapter keep provider text (which may echo credentials) redacted ---


def safe_status_error(response: httpx2.Response, what: str, redact: Callable[[str], str]) -> UpstreamStatusError:
    """Like status_error, with the provider's message passed through `redact` before any exception holds it."""
    detail = redact(_provider_message(response))
    msg = f"{what}: upstream returned HTTP {response.status_code}"
    if detail:
        msg += f": {detail}"
    return UpstreamStatusError(
        response.status_code, msg, retry_after_s=retry_after_seconds(response.headers.get("retry-after"))
    )


def is_connect_failure(err: BaseException) -> bool:
    """True when the request never reached the upstream (safe to resend even if not idempotent)."""
    return isinstance(err.__cause__, httpx2.ConnectError | httpx2.ConnectTimeout)


async def request_json(
    client: httpx2.AsyncClient,
    method: str,
    path: str,
    what: str,
    *,
    body: Any = None,
    redact: Callable[[str], str] = str,
) -> Any:
    """One request; transport failures and non-2xx answers become adapter errors, a 2xx body parsed JSON."""
    try:
        response = await client.request(method, path, json=body)
    except httpx2.HTTPError as exc:
        raise map_transport_error(exc, what) from exc
    if not response.is_success:
        raise safe_status_error(response, what, redact)
    return json_body(response, what)


@asynccontextmanager
async def stream_lines(
    client: httpx2.AsyncClient,
    method: str,
    path: str,
    what: str,
    *,
    body: Any = None,
    redact: Callable[[str], str] = str,
) -> AsyncIterator[AsyncIterator[str]]:
    """A streamed request's body as text lines; a non-2xx answer raises before the first line."""
    request = client.build_request(method, path, json=body)
    try:
        response = await client.send(request, stream=True)
    except httpx2.HTTPError as exc:
        raise map_transport_error(exc, what) from exc
    try:
        if not response.is_success:
            try:
                await response.aread()
            except httpx2.HTTPError as exc:
                raise map_transport_error(exc, what) from exc
            raise safe_status_error(response, what, redact)
        yield _lines(response, what)
    finally:
        await response.aclose()


async def _lines(response: httpx2.Response, what: str) -> AsyncIterator[str]:
    try:
        async for line in response.aiter_lines():
            yield line
    except httpx2.HTTPError as exc:
        raise map_transport_error(exc, what) from exc
