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
import contextlib
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
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):  # closing a connection the peer already dropped
            await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(str(exc)) from exc
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
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                    limit=STREAM_LIMIT,
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        raw = writer.get_extra_info("socket")
        for option in socket_options or ():  # TCP_NODELAY is asyncio's default already
            raw.setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not an upstream")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
