"""The Redis budget as several workers share it: two budget instances on two Redis
connections stand for two worker processes. What the loopback upstream saw, and when,
is the evidence; timing bounds are generous (a shared budget is much slower than two
separate ones would be, which is what they tell apart)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.broker.budget import RedisBudget
from service.sync import HostBudget, Limits, Page, Source, iter_pages
from service.sync.budget import host_key
from service.sync.client import UpstreamClient
from service.sync.errors import HostHeld, UpstreamStatusError
from tests.fixtures.upstream import Handler, Upstream, make_records, page_number
from tests.sync.helpers import ONCE, rows, source


async def collect(
    client: UpstreamClient, src: Source, limits: Limits, budget: HostBudget
) -> list[Page]:
    """One request per page (`ONCE`): what one answer does to the shared budget."""
    return [page async for page in iter_pages(client, src, limits, budget=budget, retry=ONCE)]


@pytest.fixture
def prefix() -> str:
    return f"backsync:test:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def connections(redis_base_url: str, prefix: str) -> AsyncIterator[tuple[Redis, Redis]]:
    """Two connections, as two worker processes would have; the test's keys go after."""
    first, second = Redis.from_url(redis_base_url), Redis.from_url(redis_base_url)
    yield first, second
    keys = [key async for key in first.scan_iter(match=f"{prefix}:*")]
    if keys:
        await first.delete(*keys)
    await first.aclose()
    await second.aclose()


@pytest.fixture
def budgets(connections: tuple[Redis, Redis], prefix: str) -> tuple[RedisBudget, RedisBudget]:
    return RedisBudget(connections[0], prefix), RedisBudget(connections[1], prefix)


def timed_pages(times: list[float], count: int) -> Handler:
    serve = page_number(make_records(count), size=1, with_total=True)

    def handler(request: Request) -> Response:
        times.append(time.monotonic())
        response = serve(request)
        assert isinstance(response, Response)
        return response

    return handler


async def test_two_workers_share_one_rate(
    upstream: Upstream, http: UpstreamClient, budgets: tuple[RedisBudget, RedisBudget]
) -> None:
    """Two tasks on one host, one per worker, at 5 requests/s: 12 requests with a burst
    of 5 need at least 1.4 s together. Separate buckets would take 0.2 s."""
    times: list[float] = []
    pagination = {"type": "page_number", "size": 1, "total_pages_path": "total_pages"}
    one = source(
        upstream.route("/one", timed_pages(times, 6)), records_path="data", pagination=pagination
    )
    two = source(
        upstream.route("/two", timed_pages(times, 6)), records_path="data", pagination=pagination
    )
    limits = Limits(requests_per_second=5)

    first, second = await asyncio.gather(
        collect(http, one, limits, budgets[0]), collect(http, two, limits, budgets[1])
    )

    assert len(rows(first)) == len(rows(second)) == 6
    assert len(times) == 12
    times.sort()
    assert times[-1] - times[0] >= 1.1
    assert max(sum(1 for t in times if s <= t < s + 0.5) for s in times) <= 5 + 3


async def test_a_hold_set_by_one_worker_stops_the_other(
    upstream: Upstream, http: UpstreamClient, budgets: tuple[RedisBudget, RedisBudget]
) -> None:
    times: list[float] = []

    def limited(_: Request) -> Response:
        times.append(time.monotonic())
        return JSONResponse({}, status_code=429, headers={"Retry-After": "1"})

    def other(_: Request) -> Response:
        times.append(time.monotonic())
        return JSONResponse([{"id": 1}])

    first = source(upstream.route("/limited", limited))
    second = source(upstream.route("/other", other))

    with pytest.raises(UpstreamStatusError):
        await collect(http, first, Limits(), budgets[0])
    pages = await collect(http, second, Limits(), budgets[1])

    assert rows(pages) == [{"id": 1}]
    assert times[1] - times[0] >= 0.9


async def test_a_long_hold_ends_the_other_workers_attempt(
    upstream: Upstream,
    http: UpstreamClient,
    connections: tuple[Redis, Redis],
    prefix: str,
) -> None:
    holder = RedisBudget(connections[0], prefix)
    waiter = RedisBudget(connections[1], prefix, max_wait=0.2)
    url = upstream.route("/data", lambda _: JSONResponse([]))
    key = host_key(httpx.URL(url))

    await holder.hold(key, 30)
    with pytest.raises(HostHeld) as caught:
        await collect(http, source(url), Limits(), waiter)

    assert caught.value.retry_after is not None
    assert 25 < caught.value.retry_after <= 30
    assert caught.value.retryable is True
    assert upstream.requests == []
    ttl = await connections[1].pttl(f"{prefix}:hold:{key}")
    assert 25_000 < ttl <= 30_000


async def test_over_budget_reserves_nothing(connections: tuple[Redis, Redis], prefix: str) -> None:
    """A worker that gives up does not spend the token it did not use."""
    patient = RedisBudget(connections[0], prefix)
    impatient = RedisBudget(connections[1], prefix, max_wait=0.1)

    await patient.acquire("api.example.com:443", 1)
    with pytest.raises(HostHeld, match="over its request budget"):
        await impatient.acquire("api.example.com:443", 1)
    started = time.monotonic()
    await patient.acquire("api.example.com:443", 1)

    assert 0.5 < time.monotonic() - started < 1.6


async def test_keys_expire_and_holds_are_capped(
    connections: tuple[Redis, Redis], prefix: str
) -> None:
    redis = connections[0]
    budget = RedisBudget(redis, prefix, max_hold=2)

    await budget.acquire("api.example.com:443", 10)
    await budget.hold("api.example.com:443", 86_400)
    await budget.hold("other.example.com:443", 0)

    assert 0 < await redis.pttl(f"{prefix}:bucket:api.example.com:443") <= 2_000
    assert 0 < await redis.pttl(f"{prefix}:hold:api.example.com:443") <= 2_000
    assert await redis.exists(f"{prefix}:hold:other.example.com:443") == 0


async def _listening(budget: RedisBudget) -> RedisBudget:
    await budget.start()
    for _ in range(500):
        if budget.listening:
            return budget
        await asyncio.sleep(0.01)
    raise AssertionError("the budget never started listening")


async def test_a_listening_worker_learns_holds_from_their_broadcast(
    connections: tuple[Redis, Redis], prefix: str
) -> None:
    """Another worker's hold reaches a listening one by broadcast: it holds back without
    asking Redis, which is also why a hold written without its broadcast goes unseen."""
    holder = RedisBudget(connections[0], prefix)
    listener = await _listening(RedisBudget(connections[1], prefix, max_wait=0.2))
    try:
        await connections[0].set(f"{prefix}:hold:quiet:443", 1, px=30_000)  # no broadcast
        await listener.acquire("quiet:443", None)  # unmetered: Redis not asked, not known
        with pytest.raises(HostHeld):  # a rate-limited request asks Redis, which knows
            await listener.acquire("quiet:443", 5)

        await holder.hold("busy:443", 30)
        for _ in range(500):
            if listener.knows_hold("busy:443"):
                break
            await asyncio.sleep(0.01)
        with pytest.raises(HostHeld) as caught:
            await listener.acquire("busy:443", None)
        assert caught.value.retry_after is not None and 25 < caught.value.retry_after <= 30
    finally:
        await listener.close()
    assert not listener.listening


async def test_holds_set_before_a_worker_listens_are_loaded(
    connections: tuple[Redis, Redis], prefix: str
) -> None:
    holder = RedisBudget(connections[0], prefix)
    await holder.hold("early:443", 30)
    listener = await _listening(RedisBudget(connections[1], prefix, max_wait=0.2))
    try:
        assert listener.knows_hold("early:443")
        with pytest.raises(HostHeld):
            await listener.acquire("early:443", None)
        await listener.acquire("other:443", None)
    finally:
        await listener.close()
