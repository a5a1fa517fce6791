"""Fetching ahead: the pages stored validators predict are fetched several at a time, and
handed over only in order; predictions a page proves wrong cost requests, never records."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sync import Limits, Page, RequestRetry, Source, iter_pages
from service.sync.client import UpstreamClient
from service.sync.conditional import Validator, page_key
from service.sync.errors import PageLimitReached, PaginationLoop
from tests.fixtures.upstream import Handler, Upstream, cursor, cycling, make_records, slowly
from tests.sync.helpers import QUICK, rows, source

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}


def source_at(url: str) -> Source:
    return source(url, records_path="data", pagination=CURSOR)


class InFlight:
    """Wraps a handler: each answer takes `delay`, and the most answered at once is kept."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def around(self, handler: Handler, delay: float = 0.02) -> Handler:
        delayed = slowly(handler, delay)

        async def counted(request: Request) -> Response:
            self.now += 1
            self.peak = max(self.peak, self.now)
            try:
                answer = delayed(request)
                assert not isinstance(answer, Response)
                return await answer
            finally:
                self.now -= 1

        return counted


async def walk(
    client: UpstreamClient,
    src: Source,
    known: dict[str, Validator] | None = None,
    *,
    ahead: int = 4,
    limits: Limits | None = None,
    retry: RequestRetry = QUICK,
) -> list[Page]:
    async def lookup(key: str) -> Validator | None:
        return (known or {}).get(key)

    pages = iter_pages(client, src, limits or Limits(), validators=lookup, ahead=ahead, retry=retry)
    return [page async for page in pages]


def remembered(pages: list[Page]) -> dict[str, Validator]:
    """What a run stores of its pages, by page key."""
    return {page_key(p.request): p.validator for p in pages if p.validator is not None}


def tokens(upstream: Upstream, path: str) -> Counter[str]:
    return Counter(seen.query.get("next_token", "") for seen in upstream.hits(path))


async def test_predicted_pages_are_fetched_several_at_a_time(
    upstream: Upstream, http: UpstreamClient
) -> None:
    records = make_records(40)
    flight = InFlight()
    src = source_at(upstream.route("/p", flight.around(cursor(records, size=5))))
    first = await walk(http, src)
    assert flight.peak == 1  # nothing known: each page names the next, so one at a time
    upstream.requests.clear()

    again = await walk(http, src, remembered(first))

    assert [page.request.index for page in again] == list(range(8))  # handed over in order
    assert all(page.same_as_before for page in again)
    assert flight.peak == 4
    assert tokens(upstream, "/p") == Counter(["", "5", "10", "15", "20", "25", "30", "35"])
    assert sum(page.discarded for page in again) == 0


@pytest.mark.parametrize("stale", ["records", "error"])
async def test_a_page_that_leads_elsewhere_drops_the_predictions(
    upstream: Upstream, http: UpstreamClient, stale: str
) -> None:
    records = make_records(40)
    state = {"version": 1}
    moved = make_records(12, prefix="moved")

    def handler(request: Request) -> Response:
        token = request.query_params.get("next_token") or ""
        if state["version"] == 1:
            return cursor(records, size=5)(request)  # type: ignore[return-value]
        if token == "" or token.startswith("m"):  # the new chain: "" -> m5 -> m10
            start = int(token[1:] or 0)
            following = f"m{start + 5}" if start + 5 < len(moved) else None
            return JSONResponse({"data": moved[start : start + 5], "next_token": following})
        if stale == "error":  # an old page that no longer exists (not retried in place)
            return JSONResponse({"error": "gone"}, status_code=404)
        return JSONResponse({"data": make_records(5, prefix=f"old{token}"), "next_token": None})

    src = source_at(upstream.route("/m", InFlight().around(handler)))
    first = await walk(http, src)
    state["version"] = 2
    upstream.requests.clear()

    again = await walk(http, src, remembered(first))

    assert rows(again) == moved  # nothing of the wrongly predicted pages
    assert [page.request.index for page in again] == [0, 1, 2]
    seen = tokens(upstream, "/m")
    assert seen["m5"] == seen["m10"] == seen[""] == 1
    old = sum(n for token, n in seen.items() if token in {"5", "10", "15"})
    assert 1 <= old <= 3  # predicted while the first page was on its way
    # counted: every prediction made, on the page that proved it wrong
    assert again[0].discarded == 3
    assert sum(page.discarded for page in again) == 3


async def test_a_dropped_prediction_counts_the_retries_it_made(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """Predicted pages that fail are tried again in place while the first page is on its
    way; when it leads elsewhere, every request they made is counted, retries included."""
    state = {"version": 1}
    moved = make_records(5, prefix="moved")
    serve = cursor(make_records(40), size=5)

    async def handler(request: Request) -> Response:
        if state["version"] == 1:
            return serve(request)  # type: ignore[return-value]
        if not request.query_params.get("next_token"):  # slow, and now the only page
            await asyncio.sleep(1)
            return JSONResponse({"data": moved, "next_token": None})
        return JSONResponse({"error": "busy"}, status_code=503)

    src = source_at(upstream.route("/d", handler))
    first = await walk(http, src)
    state["version"] = 2
    upstream.requests.clear()

    again = await walk(http, src, remembered(first), retry=RequestRetry(tries=3, base_delay=0))

    assert rows(again) == moved
    assert tokens(upstream, "/d") == Counter({"": 1, "5": 3, "10": 3, "15": 3})
    assert again[0].discarded == 9  # three predictions, three tries each
    assert again[0].requests == len(upstream.requests) == 10


async def test_predictions_stop_at_max_pages(upstream: Upstream, http: UpstreamClient) -> None:
    records = make_records(40)
    src = source_at(upstream.route("/l", cursor(records, size=5)))
    known = remembered(await walk(http, src))
    upstream.requests.clear()

    with pytest.raises(PageLimitReached):
        await walk(http, src, known, limits=Limits(max_pages=3))

    assert tokens(upstream, "/l") == Counter(["", "5", "10"])


async def test_without_ahead_a_page_is_fetched_only_when_asked_for(
    upstream: Upstream, http: UpstreamClient
) -> None:
    records = make_records(40)
    src = source_at(upstream.route("/s", cursor(records, size=5)))
    known = remembered(await walk(http, src))
    upstream.requests.clear()

    pages = iter_pages(http, src, Limits(), validators=_lookup(known), ahead=0)
    taken = [await anext(pages), await anext(pages)]
    await pages.aclose()

    assert [page.request.index for page in taken] == [0, 1]
    assert tokens(upstream, "/s") == Counter(["", "5"])


def _lookup(known: dict[str, Validator]) -> Any:
    async def lookup(key: str) -> Validator | None:
        return known.get(key)

    return lookup


async def test_after_a_changed_page_one_page_is_fetched_ahead(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """Changed pages are decoded and held: predictions stop running deep after one."""
    state = {"records": make_records(40)}
    at_arrival: dict[str, int] = {}
    flight = InFlight()

    def handler(request: Request) -> Response:
        at_arrival[request.query_params.get("next_token") or ""] = flight.now
        return cursor(state["records"], size=5)(request)  # type: ignore[return-value]

    # 100 ms an answer: the four predicted requests must all be in flight at once even
    # on a loaded machine (at 20 ms the first could be answered before the fourth left).
    src = source_at(upstream.route("/c", flight.around(handler, delay=0.1)))
    known = remembered(await walk(http, src))
    state["records"] = make_records(40, version=2)  # new content, the same page chain
    upstream.requests.clear()

    again = await walk(http, src, known)

    assert rows(again) == state["records"]
    assert sum(page.discarded for page in again) == 0
    assert flight.peak == 4  # the first pages were predicted unchanged, four at a time
    assert [at_arrival[token] for token in ("20", "25", "30", "35")] == [1, 1, 1, 1]


async def test_with_two_decoded_ahead_the_next_two_pages_are_fetched_while_one_is_stored(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """A first sync that stores pages two at a time (`decoded_ahead=2`): while the caller
    stores a page, the two after it are fetched, the second as soon as the first's body
    names it, and a page whose next one is already fetched says so."""
    records = make_records(30)
    src = source_at(upstream.route("/two", cursor(records, size=5)))
    pages = iter_pages(http, src, Limits(), ahead=4, decoded_ahead=2, retry=QUICK)
    first = await anext(pages)
    for _ in range(200):  # the caller is busy storing `first`; the fetches go on
        if len(upstream.hits("/two")) >= 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # page 3's answer read, not only its request arrived
    fetched_while_storing = tokens(upstream, "/two")
    second = await anext(pages)
    rest = [page async for page in pages]

    assert fetched_while_storing == Counter(["", "5", "10"])  # pages 1, 2 and 3
    assert second.following_ready  # page 3 was fetched before page 2 was handed over
    assert rows([first, second, *rest]) == records
    assert sum(tokens(upstream, "/two").values()) == 6  # each page once


async def test_with_one_decoded_ahead_only_the_next_page_is_fetched(
    upstream: Upstream, http: UpstreamClient
) -> None:
    records = make_records(30)
    src = source_at(upstream.route("/one", cursor(records, size=5)))
    pages = iter_pages(http, src, Limits(), ahead=4, retry=QUICK)
    await anext(pages)
    await asyncio.sleep(0.3)  # time enough for any page fetched ahead
    await pages.aclose()

    assert tokens(upstream, "/one") == Counter(["", "5"])


@pytest.mark.parametrize("cycle", [["a", "b"], ["a", "b", "c"]])
async def test_two_decoded_ahead_never_fetch_a_page_that_closes_a_cycle(
    upstream: Upstream, http: UpstreamClient, cycle: list[str]
) -> None:
    url = cycling(upstream, "/loop", cycle)
    src = source(
        url,
        params={"p": "a"},
        records_path="data",
        pagination={"type": "next_url", "next_url_path": "next"},
    )

    async def store_slowly() -> None:
        pages = iter_pages(http, src, Limits(), ahead=4, decoded_ahead=2, retry=QUICK)
        async for _page in pages:
            await asyncio.sleep(0.05)  # storing: the chained fetches have time to run

    with pytest.raises(PaginationLoop):
        await store_slowly()

    assert len(upstream.hits("/loop")) == len(cycle)
