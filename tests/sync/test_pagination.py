"""Each pagination type of SPEC §3 against a real upstream: the exact records, and the
exact requests — one per page, never one past the end unless the type needs it to know
the end (an empty page)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sync import Limits, fetch_one, first_request
from service.sync.client import UpstreamClient
from tests.fixtures.upstream import (
    Upstream,
    cursor,
    link_header,
    make_records,
    next_url,
    offset,
    page_number,
)
from tests.sync.helpers import collect, queries, rows, source

# ---- none ---------------------------------------------------------------------------


async def test_no_pagination_makes_one_request(upstream: Upstream, http: UpstreamClient) -> None:
    data = make_records(3)
    url = upstream.route("/all", lambda _: JSONResponse({"data": data, "next": "ignored"}))

    pages = await collect(http, source(url, records_path="data", params={"q": "x"}))

    assert rows(pages) == data
    assert [page.next for page in pages] == [None]
    assert [hit.query for hit in upstream.hits("/all")] == [{"q": "x"}]


# ---- page_number --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected_pages"),
    [
        (12, ["1", "2", "3"]),  # the third page is short: that is the end
        (10, ["1", "2", "3"]),  # an exact multiple: only the empty third page says so
        (0, ["1"]),
    ],
)
async def test_page_number_with_size_stops_on_short_or_empty_page(
    upstream: Upstream, http: UpstreamClient, count: int, expected_pages: list[str]
) -> None:
    data = make_records(count)
    url = upstream.route("/pages", page_number(data, size=5))
    pagination = {"type": "page_number", "size_param": "per_page", "size": 5}

    pages = await collect(http, source(url, records_path="data", pagination=pagination))

    assert rows(pages) == data
    hits = upstream.hits("/pages")
    assert queries(hits, "page") == expected_pages
    assert queries(hits, "per_page") == ["5"] * len(expected_pages)
    assert [page.request.index for page in pages] == list(range(len(expected_pages)))


async def test_page_number_without_size_stops_only_on_an_empty_page(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = make_records(12)
    url = upstream.route("/pages", page_number(data, size=5))

    pages = await collect(
        http, source(url, records_path="data", pagination={"type": "page_number"})
    )

    assert rows(pages) == data
    assert queries(upstream.hits("/pages"), "page") == ["1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("start", "count", "expected_pages"),
    [
        (1, 10, ["1", "2"]),  # exact multiple: total_pages saves the empty page
        (1, 11, ["1", "2", "3"]),
        (0, 10, ["0", "1"]),
        (0, 11, ["0", "1", "2"]),
    ],
)
async def test_page_number_stops_at_total_pages(
    upstream: Upstream, http: UpstreamClient, start: int, count: int, expected_pages: list[str]
) -> None:
    data = make_records(count)
    url = upstream.route("/pages", page_number(data, size=5, with_total=True, start=start))
    pagination = {"type": "page_number", "start": start, "total_pages_path": "total_pages"}

    pages = await collect(http, source(url, records_path="data", pagination=pagination))

    assert rows(pages) == data
    assert queries(upstream.hits("/pages"), "page") == expected_pages


@pytest.mark.parametrize(("start", "expected_pages"), [(0, ["0", "1", "2"]), (1, ["1", "2", "3"])])
async def test_page_number_counts_from_start(
    upstream: Upstream, http: UpstreamClient, start: int, expected_pages: list[str]
) -> None:
    data = make_records(7)
    url = upstream.route("/pages", page_number(data, size=3, start=start))
    pagination = {"type": "page_number", "start": start, "size": 3}

    pages = await collect(http, source(url, records_path="data", pagination=pagination))

    assert rows(pages) == data
    assert queries(upstream.hits("/pages"), "page") == expected_pages


# ---- offset -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected_offsets"),
    [(10, ["0", "4", "8"]), (8, ["0", "4", "8"]), (3, ["0"])],
)
async def test_offset_stops_on_a_short_page(
    upstream: Upstream, http: UpstreamClient, count: int, expected_offsets: list[str]
) -> None:
    data = make_records(count)
    url = upstream.route("/items", offset(data))
    pagination = {"type": "offset", "limit": 4}

    pages = await collect(http, source(url, records_path="items", pagination=pagination))

    assert rows(pages) == data
    hits = upstream.hits("/items")
    assert queries(hits, "offset") == expected_offsets
    assert queries(hits, "limit") == ["4"] * len(expected_offsets)


@pytest.mark.parametrize(
    ("count", "expected_offsets"),
    [(8, ["0", "4"]), (9, ["0", "4", "8"])],
)
async def test_offset_stops_at_total(
    upstream: Upstream, http: UpstreamClient, count: int, expected_offsets: list[str]
) -> None:
    data = make_records(count)
    url = upstream.route("/items", offset(data, total=True))
    pagination = {"type": "offset", "limit": 4, "total_path": "total"}

    pages = await collect(http, source(url, records_path="items", pagination=pagination))

    assert rows(pages) == data
    assert queries(upstream.hits("/items"), "offset") == expected_offsets


@pytest.mark.parametrize(
    ("count", "expected_offsets"),
    [(8, ["0", "4"]), (9, ["0", "4", "8"])],
)
async def test_offset_stops_when_has_more_is_false(
    upstream: Upstream, http: UpstreamClient, count: int, expected_offsets: list[str]
) -> None:
    data = make_records(count)
    url = upstream.route("/items", offset(data, has_more=True))
    pagination = {"type": "offset", "limit": 4, "has_more_path": "has_more"}

    pages = await collect(http, source(url, records_path="items", pagination=pagination))

    assert rows(pages) == data
    assert queries(upstream.hits("/items"), "offset") == expected_offsets


async def test_offset_honours_custom_params_and_start(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = make_records(7)

    def handler(request: Request) -> Response:
        skip, take = int(request.query_params["skip"]), int(request.query_params["take"])
        return JSONResponse({"items": data[skip : skip + take]})

    url = upstream.route("/items", handler)
    pagination = {
        "type": "offset",
        "offset_param": "skip",
        "limit_param": "take",
        "limit": 3,
        "start": 2,
    }

    pages = await collect(http, source(url, records_path="items", pagination=pagination))

    assert rows(pages) == data[2:]
    assert queries(upstream.hits("/items"), "skip") == ["2", "5"]


# ---- cursor -------------------------------------------------------------------------


def cursor_api(records: list[Any], *, size: int, last: str) -> Any:
    """A cursor API whose last page marks the end with a null, absent or empty cursor."""

    def handler(request: Request) -> Response:
        start = int(request.query_params.get("after") or 0)
        following = start + size
        body: dict[str, Any] = {"data": records[start:following], "meta": {}}
        if following < len(records):
            body["meta"]["next"] = str(following)
        elif last == "null":
            body["meta"]["next"] = None
        elif last == "empty":
            body["meta"]["next"] = ""
        return JSONResponse(body)

    return handler


@pytest.mark.parametrize("last", ["null", "absent", "empty"])
@pytest.mark.parametrize(("count", "expected"), [(7, [None, "3", "6"]), (6, [None, "3"])])
async def test_cursor_stops_when_the_cursor_ends(
    upstream: Upstream, http: UpstreamClient, last: str, count: int, expected: list[str | None]
) -> None:
    data = make_records(count)
    url = upstream.route("/feed", cursor_api(data, size=3, last=last))
    pagination = {"type": "cursor", "cursor_path": "meta.next", "cursor_param": "after"}

    pages = await collect(http, source(url, records_path="data", pagination=pagination))

    assert rows(pages) == data
    assert queries(upstream.hits("/feed"), "after") == expected
    assert pages[-1].next is None


async def test_cursor_with_the_fixture_api(upstream: Upstream, http: UpstreamClient) -> None:
    data = make_records(10)
    url = upstream.route("/feed", cursor(data, size=4))
    pagination = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}

    pages = await collect(
        http, source(url, records_path="data", pagination=pagination, params={"since": "2026"})
    )

    assert rows(pages) == data
    hits = upstream.hits("/feed")
    assert queries(hits, "next_token") == [None, "4", "8"]
    assert queries(hits, "since") == ["2026"] * 3  # the task's own params ride along


# ---- next_url -----------------------------------------------------------------------


@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize(("count", "expected"), [(7, [None, "3", "6"]), (6, [None, "3"])])
async def test_next_url_follows_relative_and_absolute_urls(
    upstream: Upstream,
    http: UpstreamClient,
    absolute: bool,
    count: int,
    expected: list[str | None],
) -> None:
    data = make_records(count)
    url = upstream.route("/results", next_url(data, size=3, absolute=absolute))
    pagination = {"type": "next_url", "next_url_path": "links.next"}

    pages = await collect(http, source(url, records_path="results", pagination=pagination))

    assert rows(pages) == data
    assert queries(upstream.hits("/results"), "from") == expected
    assert [page.request.params for page in pages[1:]] == [None] * (len(pages) - 1)


async def test_next_url_resolves_against_the_page_it_came_from(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """A query-only reference (`?page=2`) keeps the current path, as a browser would."""

    def handler(request: Request) -> Response:
        page = int(request.query_params.get("page", 1))
        return JSONResponse(
            {"data": [{"id": page}], "next": f"?page={page + 1}" if page < 3 else None}
        )

    url = upstream.route("/v1/deep/list", handler)

    pages = await collect(
        http,
        source(url, records_path="data", pagination={"type": "next_url", "next_url_path": "next"}),
    )

    assert rows(pages) == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert queries(upstream.hits("/v1/deep/list"), "page") == [None, "2", "3"]


# ---- link_header --------------------------------------------------------------------


@pytest.mark.parametrize(("count", "expected"), [(7, [None, "3", "6"]), (6, [None, "3"])])
async def test_link_header_follows_next_among_other_links(
    upstream: Upstream, http: UpstreamClient, count: int, expected: list[str | None]
) -> None:
    data = make_records(count)

    def handler(request: Request) -> Response:
        start = int(request.query_params.get("from", 0))
        last = (len(data) - 1) // 3 * 3
        links = ['</list?from=0>; rel="first"', f'</list?from={last}>; rel="last"']
        if start:
            links.insert(1, f'</list?from={start - 3}>; rel="prev"')
        if start + 3 < len(data):
            links.insert(-1, f'</list?from={start + 3}>; rel="next"')
        return JSONResponse(data[start : start + 3], headers={"Link": ", ".join(links)})

    url = upstream.route("/list", handler)

    pages = await collect(http, source(url, pagination={"type": "link_header"}))

    assert rows(pages) == data
    assert queries(upstream.hits("/list"), "from") == expected


async def test_link_header_with_the_fixture_api(upstream: Upstream, http: UpstreamClient) -> None:
    data = make_records(5)
    url = upstream.route("/list", link_header(data, size=2))

    pages = await collect(http, source(url, pagination={"type": "link_header"}))

    assert rows(pages) == data
    assert queries(upstream.hits("/list"), "from") == [None, "2", "4"]


async def test_link_header_absent_means_one_page(upstream: Upstream, http: UpstreamClient) -> None:
    url = upstream.route("/list", lambda _: JSONResponse([{"id": 1}]))

    pages = await collect(http, source(url, pagination={"type": "link_header"}))

    assert rows(pages) == [{"id": 1}]
    assert len(upstream.hits("/list")) == 1


# ---- the dry run --------------------------------------------------------------------


async def test_fetch_one_fetches_only_the_first_page_and_reports_the_next(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = make_records(10)
    url = upstream.route("/feed", cursor(data, size=4))
    src = source(
        url,
        records_path="data",
        pagination={"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"},
    )

    page = await fetch_one(http, src, Limits(), first_request(src))

    assert [row.key for row in page.records.rows] == [
        '"r000000"',
        '"r000001"',
        '"r000002"',
        '"r000003"',
    ]
    assert page.next is not None
    assert page.next.params == {"next_token": "4"}
    assert page.next.index == 1
    assert len(upstream.hits("/feed")) == 1


# ---- query strings ------------------------------------------------------------------


async def test_a_query_written_into_the_url_survives_pagination_params(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = make_records(5)
    url = upstream.route("/pages", page_number(data, size=2))
    pagination = {"type": "page_number", "size": 2}

    pages = await collect(
        http, source(url + "?fields=id,value&page=99", records_path="data", pagination=pagination)
    )

    assert rows(pages) == data
    hits = upstream.hits("/pages")
    assert queries(hits, "fields") == ["id,value"] * 3
    assert queries(hits, "page") == ["1", "2", "3"]  # the paginator's page wins


async def test_a_next_url_is_requested_byte_for_byte(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """Signed next links break if their query is re-encoded (`,` → `%2C`)."""
    raw_queries: list[str] = []

    def handler(request: Request) -> Response:
        raw_queries.append(request.scope["query_string"].decode())
        first = not request.query_params
        following = "/signed?ids=1,2&sig=a%2Fb+c&x=a;b" if first else None
        return JSONResponse({"data": [{"id": len(raw_queries)}], "next": following})

    url = upstream.route("/signed", handler)

    pages = await collect(
        http,
        source(url, records_path="data", pagination={"type": "next_url", "next_url_path": "next"}),
    )

    assert rows(pages) == [{"id": 1}, {"id": 2}]
    assert raw_queries == ["", "ids=1,2&sig=a%2Fb+c&x=a;b"]
