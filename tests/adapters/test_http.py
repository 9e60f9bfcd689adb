"""The HTTP helper family: TLS always verified, answers bounded while they arrive, provider text redacted whole."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters import _http
from adapters.base import AdapterLimits
from adapters.errors import UpstreamProtocolError, UpstreamStatusError
from tests.support.fake_ollama import FakeOllama, Fault

pytestmark = pytest.mark.anyio


def _self_signed(tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return ctx


async def _serve(ctx: ssl.SSLContext | None) -> tuple[asyncio.Server, str]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    return server, f"{'https' if ctx else 'http'}://127.0.0.1:{port}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_https_upstream_with_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    server, url = await _serve(_self_signed(tmp_path))
    client = _http.build_client(url, AdapterLimits())
    try:
        with pytest.raises(_http.httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get("/")
    finally:
        await client.aclose()
        server.close()


async def test_plain_http_upstream_is_served_without_tls(tmp_path: Path) -> None:
    server, url = await _serve(None)
    client = _http.build_client(url, AdapterLimits())
    try:
        response = await client.get("/")
        assert response.status_code == 200 and response.json() == {}
    finally:
        await client.aclose()
        server.close()


# --- HTTPUpstream: bounded answers, redaction before truncation, decoding off the event loop ---

SECRET = "plain-secret-5f3a9c1e7b2d40"  # no well-known prefix: only the adapter's own redactor knows it


def upstream(url: str, **kwargs: Any) -> _http.HTTPUpstream:
    kwargs.setdefault("redact", lambda text: text.replace(SECRET, "[redacted]"))
    return _http.HTTPUpstream(url, AdapterLimits(), describe="test adapter", options=_http.UpstreamOptions(**kwargs))


EMBED = {"model": "all-minilm", "input": ["x"]}


@pytest.mark.parametrize("declare_length", [False, True])
async def test_an_answer_over_the_cap_is_refused_while_it_arrives_not_buffered(declare_length: bool) -> None:
    with FakeOllama() as fake:
        fake.inject(Fault("oversized", path="/api/embed", size_bytes=200 << 20, declare_length=declare_length))
        http = upstream(fake.url, max_response_bytes=4 << 20)
        with anyio.fail_after(30), pytest.raises(UpstreamProtocolError, match="response limit of 4194304 bytes"):
            await http.call("POST", "/api/embed", "embed", body=EMBED, parse=_http.as_is)
        await http.aclose()
    # The rest of the 200 MB was never read: only what the cap and the socket buffers took went out.
    assert fake.streamed[-1] < 64 << 20


async def test_the_cap_applies_to_streamed_answers_and_to_each_line() -> None:
    with FakeOllama() as fake:
        fake.inject(Fault("oversized", path="/api/chat", size_bytes=8 << 20))
        http = upstream(fake.url)
        with anyio.fail_after(30), pytest.raises(UpstreamProtocolError, match="streamed line exceeds 1048576 bytes"):
            async with http.stream_lines("POST", "/api/chat", "chat", body={"model": "llama3.2:1b"}) as lines:
                async for _ in lines:
                    pass
        await http.aclose()


async def test_provider_text_is_redacted_whole_before_it_is_cut_so_a_straddling_key_leaks_nothing() -> None:
    message = "a " * 145 + SECRET + " trailing words"  # the key straddles character 300, where details are cut
    assert len("a " * 145) < 300 < len("a " * 145) + len(SECRET)
    with FakeOllama() as fake:
        fake.inject(Fault("status", path="/api/embed", status=401, message=message))
        http = upstream(fake.url)
        with pytest.raises(UpstreamStatusError) as caught:
            await http.call("POST", "/api/embed", "embed", body=EMBED, parse=_http.as_is)
        await http.aclose()
    assert "plain-secret" not in str(caught.value) and SECRET[:6] not in str(caught.value)
    assert str(caught.value).endswith("…") or "[redacted]" in str(caught.value)


async def test_an_error_body_cut_at_its_read_limit_drops_the_half_word_rather_than_leak_it() -> None:
    # Whitespace collapses when the detail is built, which would bring text from the read limit to the front.
    padding = " " * (_http.ERROR_BODY_BYTES - 10)
    with FakeOllama() as fake:
        fake.inject(Fault("status", path="/api/embed", status=500, message=padding + SECRET))
        http = upstream(fake.url)
        with pytest.raises(UpstreamStatusError) as caught:
            await http.call("POST", "/api/embed", "embed", body=EMBED, parse=_http.as_is)
        await http.aclose()
    assert "plain-sec"[:5] not in str(caught.value) and caught.value.status == 500


async def test_large_answers_are_decoded_in_a_worker_thread_and_small_ones_inline() -> None:
    threads: list[int] = []

    def parse(value: Any) -> int:
        threads.append(threading.get_ident())
        return len(value["embeddings"])

    with FakeOllama() as fake:
        http = upstream(fake.url)
        small = await http.call("POST", "/api/embed", "embed", body=EMBED, parse=parse)
        fake.inject(Fault("wide", path="/api/embed", dimensions=600_000, declare_length=True, times=1))
        with pytest.raises(UpstreamProtocolError, match="about 600000 dimensions; the limit is 65536"):
            await http.call("POST", "/api/embed", "embed", body=EMBED, parse=parse)
        fake.inject(Fault("wide", path="/api/embed", dimensions=60_000, times=1))
        wide = await http.call("POST", "/api/embed", "embed", body={**EMBED, "input": ["a"] * 3}, parse=parse)
        await http.aclose()
    assert (small, wide) == (1, 3)
    assert threads[0] == threading.get_ident() and threads[1] != threading.get_ident()


async def test_a_json_error_body_over_the_read_limit_still_yields_its_message() -> None:
    with FakeOllama() as fake:
        fake.inject(Fault("status", path="/api/embed", status=500, message="disk on fire " * 10_000))
        http = upstream(fake.url)
        with pytest.raises(UpstreamStatusError) as caught:
            await http.call("POST", "/api/embed", "embed", body=EMBED, parse=_http.as_is)
        await http.aclose()
    assert "HTTP 500: disk on fire disk on fire" in str(caught.value) and '{"error"' not in str(caught.value)
