"""Retry-After and upstream politeness (SPEC §3) with the in-process budget: a 429/503's
`Retry-After` reaches the run and holds back every task on that host; a task's
`requests_per_second` meters its host. Timing asserts are generous lower bounds."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from service.sync import HostBudget, Limits, Page, Source, iter_pages
from service.sync.budget import MemoryBudget, host_key
from service.sync.client import UpstreamClient
from service.sync.errors import HostHeld, UpstreamStatusError
from tests.fixtures.upstream import Handler, Upstream, make_records, page_number
from tests.sync.helpers import ONCE, rows, source


async def collect(
    client: UpstreamClient,
    src: Source,
    limits: Limits | None = None,
    *,
    budget: HostBudget | None = None,
) -> list[Page]:
    """One request per page (`ONCE`): these tests are about what one answer does; how a
    request is tried again, and waits out its own Retry-After, is test_request_retry's."""
    pages = iter_pages(client, src, limits or Limits(), budget=budget, retry=ONCE)
    return [page async for page in pages]


def stamped(
    times: list[float], status: int = 200, headers: dict[str, str] | None = None
) -> Handler:
    """A handler that notes when each request arrived."""

    def handler(_: Request) -> Response:
        times.append(time.monotonic())
        return JSONResponse([{"id": len(times)}], status_code=status, headers=headers)

    return handler


def most_in_window(times: list[float], window: float) -> int:
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


# ---- Retry-After on the error -------------------------------------------------------


def http_date(seconds: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(
    ("status", "header", "low", "high"),
    [
        (429, "7", 7.0, 7.0),
        (503, "120", 120.0, 120.0),
        (429, "in a while", None, None),
        (503, None, None, None),
        (429, "DATE+30", 25.0, 31.0),
    ],
)
async def test_retry_after_reaches_the_error(
    upstream: Upstream,
    http: UpstreamClient,
    status: int,
    header: str | None,
    low: float | None,
    high: float | None,
) -> None:
    if header == "DATE+30":
        header = http_date(30)
    headers = {"Retry-After": header} if header else {}
    url = upstream.route("/busy", lambda _: JSONResponse({}, status_code=status, headers=headers))

    with pytest.raises(UpstreamStatusError) as caught:
        await collect(http, source(url))

    error = caught.value
    assert error.retryable is True
    if low is None:
        assert error.retry_after is None
    else:
        assert error.retry_after is not None
        assert low <= error.retry_after <= (high or low)
        assert "Retry-After" in error.message


# ---- holds --------------------------------------------------------------------------


async def test_a_429_holds_back_every_task_on_the_host(
    upstream: Upstream, http: UpstreamClient
) -> None:
    budget = MemoryBudget(max_wait=0.2)
    limited = upstream.route(
        "/limited", lambda _: JSONResponse({}, status_code=429, headers={"Retry-After": "5"})
    )
    other = upstream.route("/other", lambda _: JSONResponse([]))

    with pytest.raises(UpstreamStatusError):
        await collect(http, source(limited), budget=budget)
    with pytest.raises(HostHeld) as caught:
        await collect(http, source(other), budget=budget)

    held = caught.value
    assert held.as_dict() | {"message": ""} == {
        "code": "upstream_held",
        "message": "",
        "http_status": None,
        "retryable": True,
    }
    assert held.retry_after is not None
    assert 4.0 < held.retry_after <= 5.0
    assert "Retry-After" in held.message
    assert upstream.hits("/other") == []


async def test_a_short_hold_is_waited_out(upstream: Upstream, http: UpstreamClient) -> None:
    budget = MemoryBudget()
    times: list[float] = []
    limited = upstream.route("/limited", stamped(times, status=429, headers={"Retry-After": "1"}))
    other = upstream.route("/other", stamped(times))

    with pytest.raises(UpstreamStatusError):
        await collect(http, source(limited), budget=budget)
    pages = await collect(http, source(other), budget=budget)

    assert rows(pages) == [{"id": 2}]
    assert times[1] - times[0] >= 0.9


@pytest.mark.parametrize(
    ("status", "retry_after", "holds"),
    [(429, "5", True), (503, "5", True), (429, None, False), (503, None, False), (500, "5", False)],
)
async def test_which_answers_hold_the_host(
    upstream: Upstream, http: UpstreamClient, status: int, retry_after: str | None, holds: bool
) -> None:
    budget = MemoryBudget(max_wait=0.2)
    headers = {"Retry-After": retry_after} if retry_after else {}
    busy = upstream.route("/busy", lambda _: JSONResponse({}, status_code=status, headers=headers))
    other = upstream.route("/other", lambda _: JSONResponse([]))

    with pytest.raises(UpstreamStatusError):
        await collect(http, source(busy), budget=budget)
    try:
        await collect(http, source(other), budget=budget)
        held = False
    except HostHeld:
        held = True

    assert held is holds


async def test_a_hold_is_capped(upstream: Upstream, http: UpstreamClient) -> None:
    """A Retry-After of a day does not silence a shared host for a day."""
    budget = MemoryBudget(max_wait=0.1, max_hold=2)
    url = upstream.route(
        "/limited", lambda _: JSONResponse({}, status_code=429, headers={"Retry-After": "86400"})
    )

    with pytest.raises(UpstreamStatusError) as first:
        await collect(http, source(url), budget=budget)
    with pytest.raises(HostHeld) as second:
        await collect(http, source(url), budget=budget)

    assert first.value.retry_after == 86400  # the run itself still honours it
    assert second.value.retry_after is not None
    assert second.value.retry_after <= 2


async def test_holds_are_per_host(upstream: Upstream, http: UpstreamClient) -> None:
    budget = MemoryBudget(max_wait=0.1)
    await budget.hold("api.example.com:443", 60)
    url = upstream.route("/data", lambda _: JSONResponse([{"id": 1}]))

    pages = await collect(http, source(url), budget=budget)

    assert rows(pages) == [{"id": 1}]


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://API.Example.com/x", "api.example.com:80"),
        ("https://api.example.com/x", "api.example.com:443"),
        ("https://api.example.com:8443/x", "api.example.com:8443"),
        ("http://127.0.0.1:9000/", "127.0.0.1:9000"),
        ("http://[::1]:9000/", "[::1]:9000"),
    ],
)
def test_host_key(url: str, key: str) -> None:
    assert host_key(httpx.URL(url)) == key


# ---- requests per second ------------------------------------------------------------


async def test_requests_per_second_meters_the_pages(
    upstream: Upstream, http: UpstreamClient
) -> None:
    times: list[float] = []
    serve = page_number(make_records(20), size=2)

    def handler(request: Request) -> Response:
        times.append(time.monotonic())
        response = serve(request)
        assert isinstance(response, Response)
        return response

    url = upstream.route("/pages", handler)
    src = source(url, records_path="data", pagination={"type": "page_number", "size": 2})

    pages = await collect(http, src, Limits(requests_per_second=5), budget=MemoryBudget())

    assert len(pages) == 11  # ten full pages and the empty one that ends it
    assert times[-1] - times[0] >= 1.0  # 5 at once (the burst), then one per 0.2 s
    assert most_in_window(times, 0.5) <= 5 + 3


async def test_without_a_rate_only_holds_apply(upstream: Upstream, http: UpstreamClient) -> None:
    times: list[float] = []
    url = upstream.route("/fast", stamped(times))

    started = time.monotonic()
    for _ in range(20):
        await collect(http, source(url), budget=MemoryBudget())

    assert len(times) == 20
    assert time.monotonic() - started < 5


async def test_a_wait_longer_than_max_wait_ends_the_attempt_instead(
    upstream: Upstream, http: UpstreamClient
) -> None:
    budget = MemoryBudget(max_wait=0.2)
    url = upstream.route("/slowly", lambda _: JSONResponse([]))
    limits = Limits(requests_per_second=0.5)

    await collect(http, source(url), limits, budget=budget)
    with pytest.raises(HostHeld) as caught:
        await collect(http, source(url), limits, budget=budget)

    assert caught.value.retry_after is not None
    assert 1.5 < caught.value.retry_after <= 2.0
    assert "over its request budget" in caught.value.message
    assert len(upstream.hits("/slowly")) == 1


# ---- every hop is a request ---------------------------------------------------------


class Recording:
    """A budget that notes which host each request waited for."""

    def __init__(self, inner: HostBudget) -> None:
        self.inner = inner
        self.hosts: list[str] = []

    async def acquire(self, host: str, requests_per_second: float | None) -> None:
        self.hosts.append(host)
        await self.inner.acquire(host, requests_per_second)

    async def hold(self, host: str, seconds: float) -> None:
        await self.inner.hold(host, seconds)


async def test_each_redirect_hop_waits_on_its_own_host(
    upstream: Upstream, http: UpstreamClient
) -> None:
    port = httpx.URL(upstream.base_url).port
    upstream.route("/a", lambda _: RedirectResponse("/b", status_code=302))
    upstream.route("/b", lambda _: RedirectResponse(f"http://LocalHost:{port}/c", 307))
    upstream.route("/c", lambda _: JSONResponse([]))
    budget = Recording(MemoryBudget())

    await collect(http, source(upstream.base_url + "/a"), budget=budget)

    assert budget.hosts == [f"127.0.0.1:{port}", f"127.0.0.1:{port}", f"localhost:{port}"]
