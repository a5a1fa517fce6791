"""httpcore's network backend on asyncio's own streams, for every upstream connection.

httpcore's default backend goes through anyio: each read and write opens a cancel
scope (`fail_after`), asks sniffio which event loop runs, and a pooled connection's
liveness check (`is_readable`) rebuilds the socket's attribute table. On a 304 page,
where the response is a few hundred bytes, that was about a fifth of the worker's CPU
(cProfile of the engine alone, session 12). Here a read or write is one asyncio call
under `asyncio.timeout`, which is what the worker's event loop is anyway.

The SSRF guard (`ssrf.GuardedBackend`) resolves and checks each address and then
connects through this backend to that IP literal: nothing here resolves a name.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import typing

import httpcore
from httpcore._utils import is_socket_readable

STREAM_LIMIT = 256 * 1024
"""How much a connection's reader buffers before it stops reading the socket: more than
httpcore asks for at once (64 KiB), so one read never waits for another."""


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection: httpcore's reads and writes, each under its own deadline."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._reader.read(max_bytes)
        except OSError as exc:  # TimeoutError included: only the deadline's is a timeout
            raise (httpcore.ReadTimeout if deadline.expired() else httpcore.ReadError)(
                str(exc) or type(exc).__name__
            ) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                self._writer.write(buffer)
                await self._writer.drain()
        except OSError as exc:
            raise (httpcore.WriteTimeout if deadline.expired() else httpcore.WriteError)(
                str(exc) or type(exc).__name__
            ) from exc

    async def aclose(self) -> None:
        """Drop the connection at once, as httpcore's anyio backend did: a graceful close
        waits for unsent data, or for a TLS peer's close_notify (up to 30 s), and
        httpcore closes idle connections in the middle of other requests."""
        self._writer.transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except OSError as exc:  # ssl.SSLError and TimeoutError included
            await self.aclose()
            raise (httpcore.ConnectTimeout if deadline.expired() else httpcore.ConnectError)(
                str(exc) or type(exc).__name__
            ) from exc
        return self

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._socket()
        if info == "is_readable":
            return is_socket_readable(self._socket())
        return None

    def _socket(self) -> socket.socket | None:
        # asyncio hands out a `TransportSocket` view; httpcore only asks for `fileno()`.
        return typing.cast(socket.socket | None, self._writer.get_extra_info("socket"))


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections as asyncio streams (`AsyncioStream`); TCP only."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                    limit=STREAM_LIMIT,
                )
        except OSError as exc:
            raise (httpcore.ConnectTimeout if deadline.expired() else httpcore.ConnectError)(
                str(exc) or type(exc).__name__
            ) from exc
        stream = AsyncioStream(reader, writer)
        try:
            raw = writer.get_extra_info("socket")
            for option in socket_options or ():  # TCP_NODELAY is asyncio's default already
                raw.setsockopt(*option)
        except OSError as exc:
            await stream.aclose()
            raise httpcore.ConnectError(str(exc)) from exc
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not an upstream")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
