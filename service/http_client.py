"""The one outbound HTTP client a process shares across all its runs (connection reuse).

Every connection it opens goes through the SSRF guard (`service.sync.ssrf`): the guard
is in the connection pool's network backend, so no request can skip it, and the
address it checked is the one the socket connects to.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpcore
import httpx

from service import __version__
from service.config import Settings
from service.metrics import UPSTREAM_LATENCY, UPSTREAM_REQUESTS, host_label
from service.sync import GuardedBackend, Resolver, TargetPolicy, UpstreamClient, system_resolver


def target_policy(settings: Settings) -> TargetPolicy:
    """`BLOCK_PRIVATE_TARGETS` and `ALLOWED_TARGETS` as the guard applies them."""
    return TargetPolicy.from_entries(
        settings.allowed_targets, block_private=settings.block_private_targets
    )


def create_upstream_client(
    settings: Settings, *, resolver: Resolver = system_resolver, counted: bool = True
) -> UpstreamClient:
    """The guarded client; `resolver` is for tests (DNS answers that change per call).
    `counted`: its requests are upstream requests in the metrics (webhook deliveries'
    are not)."""
    backend = GuardedBackend(target_policy(settings), resolver=resolver)
    return UpstreamClient(
        transport=ShardedTransport(backend, settings.upstream_max_connections, counted=counted),
        trust_env=False,  # no proxy or netrc from the environment: targets are checked as given
        follow_redirects=False,  # the engine follows them, checking every hop
        timeout=httpx.Timeout(30.0, connect=settings.upstream_connect_timeout),
        headers={"User-Agent": f"Backsync/{__version__}"},
        cookies=_no_cookies(),
    )


def _guarded_transport(
    backend: httpcore.AsyncNetworkBackend, limits: httpx.Limits, ssl_context: ssl.SSLContext
) -> httpx.AsyncHTTPTransport:
    """httpx's transport (its error mapping is what the engine translates) over a pool
    that connects through `backend`. httpx takes no backend argument, so the pool it
    built is swapped for one that does; `tests/sync/test_ssrf.py` fails if that stops
    taking effect."""
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return transport


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small connection pools behind one transport; each request goes to the
    pool with the fewest requests in flight (the first of equals, so a lone run keeps
    reusing one connection).

    httpcore's pool re-examines every connection it holds, in a loop inside a loop, each
    time a request starts or ends: with 50 runs in flight that was a tenth of the
    worker's CPU (bench/concurrency.py). Pools of at most `SHARD_CONNECTIONS` keep that
    cost small while the total stays `max_connections`.
    """

    SHARD_CONNECTIONS = 8

    def __init__(
        self, backend: httpcore.AsyncNetworkBackend, max_connections: int, *, counted: bool = True
    ) -> None:
        count = max(1, math.ceil(max_connections / self.SHARD_CONNECTIONS))
        per_shard = math.ceil(max_connections / count)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        ssl_context = httpx.create_ssl_context(trust_env=False)  # loading CAs takes ~50 ms
        self.shards = [_guarded_transport(backend, limits, ssl_context) for _ in range(count)]
        self.in_flight = [0] * count
        self.counted = counted

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self.in_flight.index(min(self.in_flight))
        self.in_flight[index] += 1
        host, start = host_label(request.url), time.perf_counter()
        try:
            response = await self.shards[index].handle_async_request(request)
        except BaseException as exc:
            self.in_flight[index] -= 1
            if self.counted:
                failed = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
                _observe(host, failed, start)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        status = response.status_code if self.counted else None
        response.stream = _Counted(response.stream, self.in_flight, index, host, status, start)
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


class _Counted(httpx.AsyncByteStream):
    """A response body that, once closed, takes its request off its shard's count and
    counts the request (`backsync_upstream_requests_total`, `..._duration_seconds`: from
    its send to its body read)."""

    def __init__(
        self,
        stream: httpx.AsyncByteStream,
        in_flight: list[int],
        index: int,
        host: str,
        status: int | None,
        start: float,
    ):
        self._stream, self._in_flight, self._index = stream, in_flight, index
        self._host, self._status, self._start = host, status, start
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._in_flight[self._index] -= 1
            if self._status is not None:
                _observe(self._host, str(self._status), self._start)
        await self._stream.aclose()


def _observe(host: str, status: str, start: float) -> None:
    UPSTREAM_REQUESTS.labels(host, status).inc()
    UPSTREAM_LATENCY.labels(host).observe(time.perf_counter() - start)


def _no_cookies() -> CookieJar:
    """A jar that keeps nothing: one client serves every tenant's tasks, and a cookie one
    upstream set must never ride along on another task's request to the same host."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
