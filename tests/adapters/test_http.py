"""The pooled client factory: TLS is verified for https upstreams; plain http needs no CA bundle."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters import _http
from adapters.base import AdapterLimits

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
