"""The one module that imports httpx2, and the one way HTTP backends talk to their upstream.

`HTTPUpstream` is the kit's helper family: ONE pooled client per adapter, built on first
use: for a plain-http upstream the lean keep-alive client of adapters/_http1.py (a request
on a warm connection ~0.1 ms of CPU), for https or HTTP/2 an httpx2 client (building one
costs ~26 ms; a request on a warm keep-alive connection ~0.6 ms of CPU); both behind one
small `Answer` interface, with the same limits and the same errors. Answers are read
under a size cap while they arrive (a larger answer is refused without being buffered);
JSON decoded by the bounded decoder, off the event loop when large; provider text
redacted before it is cut; the kit's retry policy; every transport failure translated
into the adapter error tree with `raise ... from exc`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx2
import orjson

from adapters import _http1
from adapters._json import DecodeLimits, decode
from adapters._retry import RETRY, RetryPolicy
from adapters.base import AdapterLimits
from adapters.errors import (
    AdapterError,
    AdapterTimeoutError,
    AdapterUnavailableError,
    UpstreamProtocolError,
    UpstreamStatusError,
    safe_detail,
)

T = TypeVar("T")
Redactor = Callable[[str], str]
StatusMapper = Callable[[int, str, float | None], AdapterError]

# Clients built so far, per process: benchmarks and tests read it to prove
# that no client is built per request.
CLIENTS_BUILT = 0
# An error answer is read this far for its message; the rest is dropped unread.
ERROR_BODY_BYTES = 64 << 10
# Answers up to this size are decoded on the event loop (about 2 ms); larger ones in a worker thread.
INLINE_DECODE_BYTES = 256 << 10
# One line of a streamed answer (an NDJSON chunk, an SSE event line).
MAX_LINE_BYTES = 1 << 20
_MESSAGE_HEAD = re.compile(r'"(?:message|error|detail)"\s*:\s*"((?:[^"\\]|\\.)*)')
_TOKEN_LIKE = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+|\bsk-[A-Za-z0-9_\-]{4,}")


def redact_tokens(text: str) -> str:
    """Bearer credentials and `sk-` keys, wherever they appear in provider text."""
    return _TOKEN_LIKE.sub("[redacted]", text)


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


def map_transport_error(exc: httpx2.HTTPError | _http1.TransportError, what: str) -> AdapterError:
    """Translate a transport failure; the message names the operation, never the URL's secrets."""
    if isinstance(exc, _http1.TransportError):
        if exc.timeout:
            return AdapterTimeoutError(f"{what}: upstream timed out ({exc.kind})")
        return AdapterUnavailableError(f"{what}: upstream unreachable ({exc})")
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


def status_error(status: int, message: str, retry_after_s: float | None) -> AdapterError:
    """The default mapping of a non-2xx answer: 429 and 5xx retryable, other 4xx not."""
    return UpstreamStatusError(status, message, retry_after_s=retry_after_s)


def provider_message(text: str) -> str:
    """The provider's own message in an error body (`error`, `error.message`, `message`, `detail`), or the text.

    A JSON body cut at ERROR_BODY_BYTES no longer parses; its message's head is still read from it.
    """
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        found = _MESSAGE_HEAD.search(text[:ERROR_BODY_BYTES])
        return found.group(1).replace('\\"', '"') if found else text
    if isinstance(body, dict):
        err = body.get("error", body.get("message", body.get("detail")))
        if isinstance(err, dict):
            err = err.get("message", "")
        if isinstance(err, str):
            return err
    return ""


def as_is(value: Any) -> Any:
    """The `parse` of a call that takes the decoded JSON as it is."""
    return value


def too_large(what: str, limit: int) -> UpstreamProtocolError:
    return UpstreamProtocolError(
        f"{what}: the upstream answer exceeds the response limit of {limit} bytes (max_response_bytes)"
    )


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """How an adapter's upstream speaks HTTP and reads answers.

    `headers` is called when the client is built (it may raise, e.g. for a missing key); `redact` sees
    all provider text before any message holds it; `status` maps non-2xx answers to adapter errors;
    `max_response_bytes` (None: the adapter limits' value) caps every answer.
    """

    headers: Callable[[], Mapping[str, str]] = dict
    http2: bool = False
    redact: Redactor = redact_tokens
    status: StatusMapper = status_error
    retry: RetryPolicy = RETRY
    max_response_bytes: int | None = None


class Answer(Protocol):
    """An answer with its head read: what `HTTPUpstream` needs of either client."""

    status: int

    def header(self, name: str) -> str | None: ...

    async def read(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""
        ...

    async def aclose(self) -> None: ...


class _HttpxAnswer:
    def __init__(self, response: httpx2.Response) -> None:
        self.status = response.status_code
        self._response = response
        self._pieces = response.aiter_bytes()

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name)

    async def read(self) -> bytes:
        try:
            return await anext(self._pieces)
        except StopAsyncIteration:
            return b""

    async def aclose(self) -> None:
        await self._response.aclose()


class HTTPUpstream:
    """One upstream over HTTP: the pooled client and every request an adapter makes to it."""

    def __init__(
        self, endpoint: str, limits: AdapterLimits, *, describe: str, options: UpstreamOptions | None = None
    ) -> None:
        opts = options or UpstreamOptions()
        self.endpoint = endpoint
        self.max_response_bytes = opts.max_response_bytes or limits.max_response_bytes
        self.decode_limits = DecodeLimits(max_array_items=limits.max_dimensions)
        self._limits = limits
        self._describe = describe
        self._headers = opts.headers
        self._http2 = opts.http2
        self._redact = opts.redact
        self._status = opts.status
        self._retry = opts.retry
        self._lean = _http1.usable(endpoint)
        self._client: httpx2.AsyncClient | None = None
        self._pool: _http1.Pool | None = None
        self._closed = False
        self._decoders: anyio.CapacityLimiter | None = None

    @property
    def client(self) -> httpx2.AsyncClient:
        """The httpx2 client of an https (or HTTP/2) upstream."""
        self._check_open()
        if self._client is None:
            self._client = build_client(self.endpoint, self._limits, headers=self._headers(), http2=self._http2)
        return self._client

    @property
    def pool(self) -> _http1.Pool:
        """The lean client of a plain-http upstream."""
        self._check_open()
        if self._pool is None:
            global CLIENTS_BUILT
            CLIENTS_BUILT += 1
            self._pool = _http1.Pool(self.endpoint, self._headers(), self._limits)
        return self._pool

    def _check_open(self) -> None:
        if self._closed:
            raise AdapterUnavailableError(f"{self._describe}: adapter is closed")

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if client is not None:
            await client.aclose()

    async def call(self, method: str, path: str, what: str, *, parse: Callable[[Any], T], body: object = None) -> T:
        """One request; the 2xx answer's JSON passed through `parse` (which runs where the body is decoded:
        in a worker thread for large answers, so it must not touch the event loop)."""
        return await self._retry.run(lambda: self._once(method, path, what, body, parse))

    @asynccontextmanager
    async def stream_lines(
        self, method: str, path: str, what: str, *, body: object = None
    ) -> AsyncIterator[AsyncIterator[str]]:
        """A streamed answer as text lines, each and all of them size-capped; a non-2xx answer raises first."""
        answer = await self._retry.run(lambda: self._open(method, path, what, body))
        lines = self._lines(answer, what)
        try:
            yield lines
        finally:
            await lines.aclose()
            await answer.aclose()

    # --- one exchange -------------------------------------------------------------

    async def _once(self, method: str, path: str, what: str, body: object, parse: Callable[[Any], T]) -> T:
        answer = await self._open(method, path, what, body)
        try:
            data = await self._read_capped(answer, what)
        finally:
            await answer.aclose()
        limits = self.decode_limits

        def decoded() -> T:
            return parse(decode(data, what, limits))

        if len(data) <= INLINE_DECODE_BYTES:
            return decoded()
        if self._decoders is None:
            self._decoders = anyio.CapacityLimiter(2)
        return await anyio.to_thread.run_sync(decoded, limiter=self._decoders)

    async def _send(self, method: str, path: str, content: bytes | None) -> Answer:
        if self._lean:
            return await self.pool.request(method, path, content)
        headers = None if content is None else {"Content-Type": "application/json"}
        request = self.client.build_request(method, path, content=content, headers=headers)
        return _HttpxAnswer(await self.client.send(request, stream=True))

    async def _open(self, method: str, path: str, what: str, body: object) -> Answer:
        """The answer with its head read and its body not yet; a non-2xx answer becomes its error."""
        content = None if body is None else orjson.dumps(body)
        try:
            answer = await self._send(method, path, content)
        except (httpx2.HTTPError, _http1.TransportError) as exc:
            raise map_transport_error(exc, what) from exc
        if 200 <= answer.status < 300:
            return answer
        try:
            text = await self._error_text(answer, what)
        finally:
            await answer.aclose()
        detail = safe_detail(self._redact(provider_message(text)))
        message = f"{what}: upstream returned HTTP {answer.status}" + (f": {detail}" if detail else "")
        raise self._status(answer.status, message, retry_after_seconds(answer.header("retry-after")))

    async def _read_capped(self, answer: Answer, what: str) -> bytes:
        limit = self.max_response_bytes
        declared = answer.header("content-length") or ""
        if declared.isdigit() and int(declared) > limit:
            raise too_large(what, limit)
        data = bytearray()
        try:
            while piece := await answer.read():
                data += piece
                if len(data) > limit:
                    raise too_large(what, limit)
        except (httpx2.HTTPError, _http1.TransportError) as exc:
            raise map_transport_error(exc, what) from exc
        return bytes(data)

    async def _error_text(self, answer: Answer, what: str) -> str:
        """The first ERROR_BODY_BYTES of an error answer, never ending inside a word: a secret cut in two
        would slip past redaction, so a truncated tail is dropped back to the last whitespace."""
        data = bytearray()
        try:
            while piece := await answer.read():
                data += piece
                if len(data) > ERROR_BODY_BYTES:
                    cut = max(data.rfind(b" ", 0, ERROR_BODY_BYTES), data.rfind(b"\n", 0, ERROR_BODY_BYTES))
                    del data[max(cut, 0) :]
                    break
        except (httpx2.HTTPError, _http1.TransportError) as exc:
            raise map_transport_error(exc, what) from exc
        return data.decode("utf-8", errors="replace")

    async def _lines(self, answer: Answer, what: str) -> AsyncGenerator[str, None]:
        limit = self.max_response_bytes
        total = 0
        pending = b""
        try:
            while chunk := await answer.read():
                total += len(chunk)
                if total > limit:
                    raise too_large(what, limit)
                *complete, pending = (pending + chunk).split(b"\n")
                if len(pending) > MAX_LINE_BYTES:
                    raise UpstreamProtocolError(f"{what}: a streamed line exceeds {MAX_LINE_BYTES} bytes")
                for line in complete:
                    yield _text(line, what)
        except (httpx2.HTTPError, _http1.TransportError) as exc:
            raise map_transport_error(exc, what) from exc
        if pending:
            yield _text(pending, what)


def _text(line: bytes, what: str) -> str:
    if len(line) > MAX_LINE_BYTES:
        raise UpstreamProtocolError(f"{what}: a streamed line exceeds {MAX_LINE_BYTES} bytes")
    try:
        return line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise UpstreamProtocolError(f"{what}: a streamed line is not UTF-8") from exc
