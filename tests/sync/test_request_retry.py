"""A transient failure of one request is tried again in place (`service.sync.request_retry`):
what is tried again and how often, `Retry-After` honoured for this run and every other
on the host, a long one ending the attempt instead, and the extra requests counted."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sync import (
    REQUEST_RETRY,
    Limits,
    Page,
    RequestRetry,
    Source,
    SyncError,
    fetch_one,
    first_request,
    iter_pages,
)
from service.sync.budget import MemoryBudget
from service.sync.client import UpstreamClient
from service.sync.errors import (
    CutOff,
    HostHeld,
    InvalidBody,
    ResponseTooLarge,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from service.sync.request_retry import RetryCount
from tests.fixtures.upstream import (
    CutShort,
    Handler,
    Seen,
    Upstream,
    cursor,
    failing,
    first_answers,
    free_port,
    make_records,
    slowly,
)
from tests.sync.helpers import ONCE, QUICK, collect_until_error, rows, source

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}
RECORDS = [{"id": 1}, {"id": 2}]


def ok(_: Request) -> Response:
    return JSONResponse(RECORDS)


def status(code: int, **headers: str) -> Response:
    return JSONResponse({"error": "nope"}, status_code=code, headers=headers)


async def fetch(
    http: UpstreamClient,
    src: Source,
    retry: RequestRetry = QUICK,
    *,
    limits: Limits | None = None,
    budget: MemoryBudget | None = None,
) -> Page:
    """One page as the dry run fetches it (`fetch_one`)."""
    return await fetch_one(
        http, src, limits or Limits(), first_request(src), budget=budget, retry=retry
    )


def gaps_after(first: Seen, later: list[Seen]) -> list[float]:
    return [seen.at - first.at for seen in later]


# ---- what is tried again, and how many times ----------------------------------------


async def test_a_page_failing_twice_is_fetched_in_one_call(
    upstream: Upstream, http: UpstreamClient
) -> None:
    url = upstream.route("/flaky", failing(ok, first_answers(status(503), status(503))))

    page = await fetch(http, source(url))

    assert rows([page]) == RECORDS
    assert len(upstream.hits("/flaky")) == 3
    assert page.retries == 2
    assert page.requests == 3


Answer = Callable[[], Response]


@pytest.mark.parametrize(
    ("answer", "error", "requests"),
    [
        *((lambda code=code: status(code), UpstreamStatusError, 4) for code in (500, 502, 503)),
        *((lambda code=code: status(code), UpstreamStatusError, 4) for code in (504, 408, 429)),
        *((lambda code=code: status(code), UpstreamStatusError, 1) for code in (400, 401, 403)),
        *((lambda code=code: status(code), UpstreamStatusError, 1) for code in (404, 409, 422)),
        (CutShort, CutOff, 4),
        (lambda: Response(b"<html>busy</html>", media_type="application/json"), InvalidBody, 2),
        (lambda: Response(b"not gzip", headers={"Content-Encoding": "gzip"}), InvalidBody, 2),
        (lambda: Response(b"[" + b" " * 5000 + b"]"), ResponseTooLarge, 1),
    ],
    ids=[
        *map(str, (500, 502, 503, 504, 408, 429, 400, 401, 403, 404, 409, 422)),
        "cut-off",
        "not-json",
        "bad-encoding",
        "too-large",
    ],
)
async def test_how_many_requests_a_persistent_failure_gets(
    upstream: Upstream,
    http: UpstreamClient,
    answer: Answer,
    error: type[SyncError],
    requests: int,
) -> None:
    """4xx other than 408/429 is never tried again; a body that is whole but not JSON,
    once; the rest as often as the policy says. The error is the one a single try gives."""
    url = upstream.route("/always", lambda _: answer())
    limits = Limits(max_response_bytes=1024)

    with pytest.raises(error) as retried:
        await fetch(http, source(url), limits=limits)
    assert len(upstream.hits("/always")) == requests
    with pytest.raises(error) as once:
        await fetch(http, source(url), ONCE, limits=limits)

    assert type(retried.value) is type(once.value)
    assert retried.value.as_dict() == once.value.as_dict()


async def test_a_timeout_is_tried_once_more(upstream: Upstream, http: UpstreamClient) -> None:
    """Each try costs a whole `timeout_seconds`: two in a row say the upstream is slow."""
    url = upstream.route("/slow", slowly(ok, 0.5))

    with pytest.raises(UpstreamTimeout) as caught:
        await fetch(http, source(url), limits=Limits(timeout_seconds=0.1))

    assert caught.value.code == "upstream_timeout"
    assert caught.value.retryable is True
    assert len(upstream.hits("/slow")) == 2


async def test_a_refused_connection_is_tried_as_often_as_the_policy_says(
    http: UpstreamClient,
) -> None:
    src = source(f"http://127.0.0.1:{free_port()}/nothing-listens")
    retries = RetryCount()

    with pytest.raises(UpstreamUnavailable) as caught:
        await fetch_one(http, src, Limits(), first_request(src), retry=QUICK, retries=retries)

    assert caught.value.code == "upstream_unavailable"
    assert retries.value == QUICK.tries - 1


async def test_a_cut_off_body_then_a_whole_one(upstream: Upstream, http: UpstreamClient) -> None:
    url = upstream.route("/cut", failing(ok, first_answers(CutShort(), CutShort(), CutShort())))

    page = await fetch(http, source(url))

    assert rows([page]) == RECORDS
    assert page.retries == 3


async def test_the_tries_of_a_page_are_counted_across_failures(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """A page may take `tries` requests in all, whatever mix of failures it meets."""
    answers = first_answers(status(500), status(429), CutShort(), status(502))
    url = upstream.route("/mixed", failing(ok, answers))

    with pytest.raises(UpstreamStatusError) as caught:
        await fetch(http, source(url))

    assert caught.value.http_status == 502
    assert len(upstream.hits("/mixed")) == 4


async def test_each_retry_waits_on_the_budget(upstream: Upstream, http: UpstreamClient) -> None:
    asked: list[str] = []

    class Counting(MemoryBudget):
        async def acquire(self, host: str, requests_per_second: float | None) -> None:
            asked.append(host)
            await super().acquire(host, requests_per_second)

    url = upstream.route("/b", failing(ok, first_answers(status(500), status(503))))

    page = await fetch(http, source(url), budget=Counting())

    assert page.retries == 2
    assert len(asked) == 3


# ---- Retry-After ---------------------------------------------------------------------


async def test_a_retry_after_is_waited_out_without_a_budget(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """The dry run has no budget: the retry itself keeps out of the window."""
    url = upstream.route(
        "/limited", failing(ok, first_answers(status(429, **{"Retry-After": "1"})))
    )

    page = await fetch(http, source(url))

    first, retry = upstream.hits("/limited")
    assert retry.at - first.at >= 1.0
    assert page.retries == 1
    assert rows([page]) == RECORDS


class Held(MemoryBudget):
    """A budget that says when a hold was set."""

    def __init__(self) -> None:
        super().__init__()
        self.held = asyncio.Event()

    async def hold(self, host: str, seconds: float) -> None:
        await super().hold(host, seconds)
        self.held.set()


async def test_no_request_to_the_host_inside_the_retry_after_window(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """The run that met the 429 retries after it; another run on the host, started
    while it waits, waits for the hold: nobody asks the host inside the window."""
    budget = Held()
    busy = failing(ok, first_answers(status(429, **{"Retry-After": "1"})))
    limited = source(upstream.route("/limited", busy))
    other = source(upstream.route("/other", ok))

    waiting = asyncio.ensure_future(fetch(http, limited, budget=budget))
    await budget.held.wait()
    elsewhere = await fetch(http, other, budget=budget)
    page = await waiting

    first, *later = upstream.requests
    assert first.path == "/limited"
    assert Counter(seen.path for seen in later) == {"/limited": 1, "/other": 1}
    assert min(gaps_after(first, later)) >= 1.0
    assert rows([page]) == rows([elsewhere]) == RECORDS
    assert page.retries == 1


async def test_retry_after_is_the_least_wait(upstream: Upstream, http: UpstreamClient) -> None:
    """Longer than the backoff, it wins; on any retried answer, not only 429/503."""
    url = upstream.route("/e", failing(ok, first_answers(status(500, **{"Retry-After": "1"}))))

    page = await fetch(http, source(url), budget=MemoryBudget())

    first, retry = upstream.hits("/e")
    assert retry.at - first.at >= 1.0
    assert page.retries == 1


@pytest.mark.parametrize(("code", "seconds"), [(429, "31"), (503, "3600")])
async def test_a_retry_after_longer_than_the_engine_waits_in_place_ends_the_attempt(
    upstream: Upstream, http: UpstreamClient, code: int, seconds: str
) -> None:
    """Raised at once with the upstream's Retry-After (the next attempt is scheduled
    after it); the host stays held for everyone."""
    budget = MemoryBudget(max_wait=0.1)
    url = upstream.route("/later", lambda _: status(code, **{"Retry-After": seconds}))
    retries = RetryCount()
    src = source(url)

    with pytest.raises(UpstreamStatusError) as caught:
        await fetch_one(http, src, Limits(), first_request(src), budget=budget, retries=retries)
    with pytest.raises(HostHeld):
        await fetch(http, src, budget=budget)

    assert caught.value.retry_after == float(seconds)
    assert caught.value.retryable is True
    assert REQUEST_RETRY.max_in_place_wait < float(seconds)
    assert retries.value == 0
    assert len(upstream.hits("/later")) == 1


async def test_the_longest_wait_in_place_is_the_policys(
    upstream: Upstream, http: UpstreamClient
) -> None:
    url = upstream.route("/later", lambda _: status(429, **{"Retry-After": "2"}))

    with pytest.raises(UpstreamStatusError) as caught:
        await fetch(http, source(url), RequestRetry(max_in_place_wait=1))

    assert caught.value.retry_after == 2
    assert len(upstream.hits("/later")) == 1


async def test_a_long_hold_on_a_retry_ends_the_attempt(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """A retry asks the budget like any request: a hold set meanwhile (another run met a
    long Retry-After), too long to wait, ends the attempt as it would the first request."""

    class HeldMeanwhile(MemoryBudget):
        asked = 0

        async def acquire(self, host: str, requests_per_second: float | None) -> None:
            self.asked += 1
            if self.asked == 2:
                await self.hold(host, 60)
            await super().acquire(host, requests_per_second)

    src = source(upstream.route("/x", lambda _: status(503)))

    with pytest.raises(HostHeld):
        await fetch(http, src, budget=HeldMeanwhile(max_wait=0.5))

    assert len(upstream.hits("/x")) == 1


# ---- the page loop -------------------------------------------------------------------


def every_fifth_fails(handler: Handler) -> Handler:
    """20% of requests fail, two in a row every ten, by arrival order (deterministic)."""
    arrivals = itertools.count()
    answers = [500, 502, 503, 504, 429]

    def flaky(request: Request) -> Response:
        n = next(arrivals)
        if n % 10 in (3, 4):
            return status(answers[n // 10 % len(answers)])
        result = handler(request)
        assert isinstance(result, Response)
        return result

    return flaky


@pytest.mark.parametrize("ahead", [0, 2])
async def test_a_flaky_upstream_yields_every_page_once(
    upstream: Upstream, http: UpstreamClient, ahead: int
) -> None:
    records = make_records(60)
    url = upstream.route("/feed", every_fifth_fails(cursor(records, size=3)))
    src = source(url, records_path="data", pagination=CURSOR)

    pages = [page async for page in iter_pages(http, src, Limits(), ahead=ahead, retry=QUICK)]

    assert rows(pages) == records
    assert [page.request.index for page in pages] == list(range(20))
    hits = upstream.hits("/feed")
    assert len(hits) == 26  # requests 3 and 4, 13 and 14, 23 and 24 failed
    assert [page.retries for page in pages if page.retries] == [2, 2, 2]
    assert sum(page.requests for page in pages) == len(hits)


async def test_the_page_loop_keeps_the_last_error(upstream: Upstream, http: UpstreamClient) -> None:
    """Pages before a page that fails every try are yielded; its error ends the loop."""
    serve = cursor(make_records(10), size=2)

    def handler(request: Request) -> Response:
        if request.query_params.get("next_token") == "4":
            return status(503)
        result = serve(request)
        assert isinstance(result, Response)
        return result

    src = source(upstream.route("/f", handler), records_path="data", pagination=CURSOR)

    pages, error = await collect_until_error(http, src, retry=QUICK)

    assert isinstance(error, UpstreamStatusError)
    assert error.http_status == 503
    assert len(pages) == 2
    assert [seen.query.get("next_token") for seen in upstream.hits("/f")] == [
        None,
        "2",
        *["4"] * QUICK.tries,
    ]


# ---- the policy ----------------------------------------------------------------------


def test_waits_grow_within_their_caps_and_never_undercut_retry_after() -> None:
    policy = RequestRetry(base_delay=0.5, max_delay=1.5)
    busy = UpstreamStatusError(503, "")
    for tried, cap in [(1, 0.5), (2, 1.0), (3, 1.5)]:
        waits = [policy.wait_before_retry(busy, tried) for _ in range(200)]
        assert all(wait is not None and 0 <= wait <= cap for wait in waits)
    assert policy.wait_before_retry(busy, 4) is None
    asked = UpstreamStatusError(429, "", retry_after=7)
    assert policy.wait_before_retry(asked, 1) == 7


@pytest.mark.parametrize(
    ("error", "tries"),
    [
        (UpstreamStatusError(500, ""), 4),
        (UpstreamStatusError(429, ""), 4),
        (UpstreamStatusError(404, ""), 1),
        (UpstreamUnavailable("reset"), 4),
        (UpstreamTimeout("slow"), 2),
        (CutOff("cut"), 4),
        (InvalidBody("not json"), 2),
        (HostHeld("held", retry_after=5), 1),
        (ResponseTooLarge("big"), 1),
    ],
)
def test_tries_by_failure(error: SyncError, tries: int) -> None:
    assert REQUEST_RETRY.tries_for(error) == tries


def test_a_policy_tries_at_least_once() -> None:
    with pytest.raises(ValueError, match="at least once"):
        RequestRetry(tries=0)
