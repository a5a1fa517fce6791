"""The upstream connections' network backend (`service.sync.sockets`) against real
servers on loopback: plain HTTP and TLS through the SSRF guard, and each failure as the
httpcore error httpx (and so the engine) translates."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sync import GuardedBackend, TargetPolicy
from service.sync.sockets import AsyncioBackend
from tests.fixtures.upstream import Upstream, UpstreamServer, free_port

LOOPBACK = TargetPolicy.from_entries(["127.0.0.1"], block_private=True)


def _self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backsync-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return _self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_upstream(certificate: tuple[str, str]) -> Iterator[Upstream]:
    server = UpstreamServer(tls=certificate)
    yield server.start()
    server.stop()


def _pool(ssl_context: ssl.SSLContext | None = None) -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(
        ssl_context=ssl_context, network_backend=GuardedBackend(LOOPBACK)
    )


@pytest.fixture
async def trusting(certificate: tuple[str, str]) -> AsyncIterator[httpcore.AsyncConnectionPool]:
    context = ssl.create_default_context(cafile=certificate[0])
    async with _pool(context) as pool:
        yield pool


def test_the_guard_connects_through_asyncio_streams() -> None:
    assert isinstance(GuardedBackend(LOOPBACK)._inner, AsyncioBackend)


async def test_a_tls_upstream_answers_and_its_connection_is_reused(
    tls_upstream: Upstream, trusting: httpcore.AsyncConnectionPool
) -> None:
    url = tls_upstream.route("/tls", lambda _r: JSONResponse({"data": ["x" * 100_000]}))
    for _ in range(3):
        response = await trusting.request("GET", url)
        assert response.status == 200
        assert len(response.content) > 100_000  # several reads of one body
    assert len(trusting.connections) == 1
    info = trusting.connections[0]._connection._network_stream  # type: ignore[attr-defined]
    assert info.get_extra_info("ssl_object") is not None
    assert info.get_extra_info("server_addr")[0] == "127.0.0.1"
    assert info.get_extra_info("is_readable") is False  # idle, nothing sent to it


async def test_an_untrusted_certificate_is_a_connect_error(tls_upstream: Upstream) -> None:
    url = tls_upstream.route("/untrusted", lambda _r: JSONResponse({}))
    async with _pool(ssl.create_default_context()) as pool:  # the system's CAs only
        with pytest.raises(httpcore.ConnectError):
            await pool.request("GET", url)


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with _pool() as pool:
        with pytest.raises(httpcore.ConnectError):
            await pool.request("GET", f"http://127.0.0.1:{free_port()}/")


async def test_an_upstream_that_never_answers_is_a_read_timeout(upstream: Upstream) -> None:
    async def silent(_request: Request) -> Response:
        await asyncio.sleep(5)
        return JSONResponse({})

    url = upstream.route("/silent", silent)
    async with _pool() as pool:
        with pytest.raises(httpcore.ReadTimeout):
            await pool.request("GET", url, extensions={"timeout": {"read": 0.2}})


async def test_a_connection_the_upstream_closed_is_not_reused(upstream: Upstream) -> None:
    url = upstream.route("/close", lambda _r: JSONResponse({}, headers={"Connection": "close"}))
    async with _pool() as pool:
        first = await pool.request("GET", url)
        second = await pool.request("GET", url)
    assert (first.status, second.status) == (200, 200)


async def test_a_socket_option_is_applied() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        option = (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, socket_options=[option])
        raw = stream.get_extra_info("socket")
        assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        await stream.aclose()
    finally:
        listener.close()


async def test_a_tls_handshake_that_never_ends_is_a_connect_timeout(
    certificate: tuple[str, str],
) -> None:
    """A server that accepts and never speaks TLS: the handshake gives up at its timeout,
    and closing the half-open connection does not wait for the peer."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port)
        context = ssl.create_default_context(cafile=certificate[0])
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpcore.ConnectTimeout):
            await stream.start_tls(context, server_hostname="127.0.0.1", timeout=0.2)
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        listener.close()
