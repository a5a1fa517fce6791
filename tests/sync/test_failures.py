"""Limits and failures: each ends the page loop with the SyncError a run reports (after
the retries in place a transient one gets), and its `retryable` decides between another
attempt and a failed run. Plus resuming from a checkpoint."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from service.sync import Limits, PageRequest, SyncError, iter_pages
from service.sync.client import UpstreamClient
from service.sync.errors import (
    InvalidBody,
    PageLimitReached,
    PaginationLoop,
    ResponseTooLarge,
    UpstreamStatusError,
    UpstreamUnavailable,
)
from tests.fixtures.upstream import Upstream, cursor, free_port, make_records, next_url, page_number
from tests.sync.helpers import QUICK, collect, collect_until_error, queries, rows, source

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}


# ---- max_pages ----------------------------------------------------------------------


async def test_max_pages_stops_before_the_next_request(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = make_records(10)
    url = upstream.route("/feed", cursor(data, size=2))
    src = source(url, records_path="data", pagination=CURSOR)

    seen, error = await collect_until_error(http, src, Limits(max_pages=3))

    assert isinstance(error, PageLimitReached)
    assert rows(seen) == data[:6]
    assert len(upstream.hits("/feed")) == 3
    assert error.code == "max_pages_exceeded"
    assert error.retryable is False


async def test_max_pages_equal_to_the_pages_needed_is_fine(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = make_records(10)
    url = upstream.route("/feed", cursor(data, size=2))

    pages = await collect(
        http, source(url, records_path="data", pagination=CURSOR), Limits(max_pages=5)
    )

    assert rows(pages) == data


# ---- size cap -----------------------------------------------------------------------


async def test_declared_content_length_over_the_cap(
    upstream: Upstream, http: UpstreamClient
) -> None:
    url = upstream.route(
        "/big", lambda _: JSONResponse([{"id": i, "pad": "x" * 100} for i in range(20)])
    )

    with pytest.raises(ResponseTooLarge, match=r"response of \d+ bytes") as caught:
        await collect(http, source(url), Limits(max_response_bytes=1024))

    assert caught.value.code == "response_too_large"
    assert caught.value.retryable is False


async def test_streamed_response_over_the_cap(upstream: Upstream, http: UpstreamClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"["
        for i in range(200):
            yield orjson.dumps({"id": i, "pad": "x" * 100}) + b","
        yield b'{"id": -1}]'

    def handler(_: Request) -> Response:
        response = StreamingResponse(chunks(), media_type="application/json")
        assert "content-length" not in response.headers
        return response

    url = upstream.route("/stream", handler)

    with pytest.raises(ResponseTooLarge, match="response exceeds max_response_bytes=2048"):
        await collect(http, source(url), Limits(max_response_bytes=2048))


async def test_a_streamed_response_under_the_cap_is_read_whole(
    upstream: Upstream, http: UpstreamClient
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'[{"id"', b": 1},", b'{"id": 2}]'):
            yield part

    url = upstream.route("/stream", lambda _: StreamingResponse(chunks()))

    (page,) = await collect(http, source(url), Limits(max_response_bytes=1024))

    assert rows([page]) == [{"id": 1}, {"id": 2}]
    assert page.fetched.nbytes == len(b'[{"id": 1},{"id": 2}]')


async def test_a_body_of_exactly_the_cap_is_allowed(
    upstream: Upstream, http: UpstreamClient
) -> None:
    body = b'[{"id":1,"pad":"' + b"x" * (1024 - 19) + b'"}]'
    assert len(body) == 1024
    url = upstream.route("/exact", lambda _: Response(body, media_type="application/json"))

    (page,) = await collect(http, source(url), Limits(max_response_bytes=1024))

    assert page.fetched.nbytes == 1024


# ---- broken bodies ------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"data": [1, 2', b""])
async def test_invalid_json_is_a_retryable_invalid_body(
    upstream: Upstream, http: UpstreamClient, body: bytes
) -> None:
    url = upstream.route("/broken", lambda _: Response(body, media_type="application/json"))

    with pytest.raises(InvalidBody) as caught:
        await collect(http, source(url))

    assert caught.value.retryable is True
    assert caught.value.code == "invalid_body"
    assert caught.value.as_dict()["http_status"] == 200


async def test_an_html_answer_names_its_content_type(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """A login or error page (a proxy, the wrong URL) is recognisable by its content type."""
    page = b"<!doctype html><title>Sign in</title>"
    url = upstream.route("/login", lambda _: Response(page, media_type="text/html"))

    with pytest.raises(InvalidBody) as caught:
        await collect(http, source(url))

    assert caught.value.message == (
        f"upstream body is not valid JSON (Content-Type text/html, {len(page)} bytes)"
    )
    assert caught.value.code == "invalid_body"


async def test_broken_compression_is_a_retryable_invalid_body(
    upstream: Upstream, http: UpstreamClient
) -> None:
    url = upstream.route(
        "/gz", lambda _: Response(b"definitely not gzip", headers={"Content-Encoding": "gzip"})
    )

    with pytest.raises(InvalidBody) as caught:
        await collect(http, source(url))

    assert caught.value.retryable is True


async def test_compressed_body_is_capped_after_decompression(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """A small gzip that inflates past the cap is refused (no decompression bomb)."""
    body = gzip.compress(b'[{"id": 1, "pad": "' + b"x" * 200_000 + b'"}]')
    assert len(body) < 2048
    url = upstream.route(
        "/bomb",
        lambda _: Response(
            body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        ),
    )

    with pytest.raises(ResponseTooLarge):
        await collect(http, source(url), Limits(max_response_bytes=4096))


# ---- status codes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
    ],
)
async def test_upstream_status_errors(
    upstream: Upstream, http: UpstreamClient, status: int, retryable: bool
) -> None:
    url = upstream.route("/status", lambda _: JSONResponse({"error": "nope"}, status_code=status))

    with pytest.raises(UpstreamStatusError) as caught:
        await collect(http, source(url))

    assert caught.value.as_dict() == {
        "code": "upstream_status",
        "message": caught.value.message,
        "http_status": status,
        "retryable": retryable,
    }
    assert str(status) in caught.value.message
    # tried again in place only when worth it (tests/sync/test_request_retry.py)
    assert len(upstream.hits("/status")) == (QUICK.tries if retryable else 1)


async def test_a_failure_on_a_later_page_keeps_the_pages_before_it(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = make_records(6)
    serve = page_number(data, size=2)

    def handler(request: Request) -> Response:
        if request.query_params["page"] == "2":
            return JSONResponse({}, status_code=503)
        response = serve(request)
        assert isinstance(response, Response)
        return response

    url = upstream.route("/flaky", handler)
    src = source(url, records_path="data", pagination={"type": "page_number", "size": 2})

    seen, error = await collect_until_error(http, src)

    assert isinstance(error, UpstreamStatusError)
    assert error.retryable is True
    assert rows(seen) == data[:2]
    assert seen[0].next is not None
    assert seen[0].next.params == {"page": 2}


async def test_redirect_loop_is_a_clear_error(upstream: Upstream, http: UpstreamClient) -> None:
    url = upstream.route("/loop", lambda _: RedirectResponse("/loop", status_code=302))

    with pytest.raises(SyncError) as caught:
        await collect(http, source(url))

    assert caught.value.code == "too_many_redirects"
    assert caught.value.retryable is False


async def test_redirects_are_followed_to_the_records(
    upstream: Upstream, http: UpstreamClient
) -> None:
    upstream.route("/new", lambda _: JSONResponse([{"id": 1}]))
    url = upstream.route("/old", lambda _: RedirectResponse("/new", status_code=301))

    pages = await collect(http, source(url))

    assert rows(pages) == [{"id": 1}]
    assert pages[0].fetched.url.endswith("/new")


# ---- transport ----------------------------------------------------------------------


async def test_connection_refused_is_upstream_unavailable(http: UpstreamClient) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/nothing-listens"

    with pytest.raises(UpstreamUnavailable) as caught:
        await collect(http, source(url))

    assert caught.value.code == "upstream_unavailable"
    assert caught.value.retryable is True
    assert caught.value.http_status is None
    assert caught.value.message == f"connection refused by 127.0.0.1:{port}"


async def test_a_host_that_does_not_resolve_is_told_apart_from_a_refusal(
    http: UpstreamClient,
) -> None:
    """Same code (either may pass), but the message says which: a typo in the host name
    or DNS trouble here is not a server that is down. `.invalid` never resolves (RFC 2606)."""
    with pytest.raises(UpstreamUnavailable) as caught:
        await collect(http, source("https://no-such-upstream.invalid/v1/data"))

    assert caught.value.code == "upstream_unavailable"
    assert caught.value.message.startswith("could not resolve host no-such-upstream.invalid (")
    assert "refused" not in caught.value.message


async def test_slow_answer_times_out(upstream: Upstream, http: UpstreamClient) -> None:
    async def handler(_: Request) -> Response:
        await asyncio.sleep(0.5)
        return JSONResponse([])

    url = upstream.route("/slow", handler)

    with pytest.raises(UpstreamUnavailable) as caught:
        await collect(http, source(url), Limits(timeout_seconds=0.1))

    assert caught.value.code == "upstream_timeout"
    assert caught.value.retryable is True


async def test_trickling_body_times_out_as_a_whole(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """Each byte arrives well within the timeout, but the response as a whole does not:
    `timeout_seconds` bounds the request, or a drip-feeding upstream holds a worker forever."""

    async def drip() -> AsyncIterator[bytes]:
        yield b"["
        for _ in range(40):
            await asyncio.sleep(0.05)
            yield b" "
        yield b"]"

    url = upstream.route("/drip", lambda _: StreamingResponse(drip()))

    with pytest.raises(UpstreamUnavailable) as caught:
        await collect(http, source(url), Limits(timeout_seconds=0.3))

    assert caught.value.code == "upstream_timeout"


# ---- pagination loops ---------------------------------------------------------------


async def test_same_cursor_forever_is_a_pagination_loop(
    upstream: Upstream, http: UpstreamClient
) -> None:
    url = upstream.route(
        "/stuck", lambda _: JSONResponse({"data": [{"id": 1}], "next_token": "abc"})
    )

    with pytest.raises(PaginationLoop) as caught:
        await collect(http, source(url, records_path="data", pagination=CURSOR))

    assert caught.value.code == "pagination_loop"
    assert caught.value.retryable is False
    assert queries(upstream.hits("/stuck"), "next_token") == [None, "abc"]


async def test_next_url_pointing_at_itself_is_a_pagination_loop(
    upstream: Upstream, http: UpstreamClient
) -> None:
    def handler(request: Request) -> Response:
        return JSONResponse({"data": [], "next": str(request.url)})

    url = upstream.route("/self", handler)
    src = source(
        url + "?p=1", records_path="data", pagination={"type": "next_url", "next_url_path": "next"}
    )

    with pytest.raises(PaginationLoop):
        await collect(http, src)

    assert len(upstream.hits("/self")) == 1  # `?p=1` in the URL is the same address


# ---- resuming -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["page_number", "cursor", "next_url"])
async def test_resume_from_a_checkpoint_fetches_only_the_rest(
    upstream: Upstream, http: UpstreamClient, shape: str
) -> None:
    data = make_records(9)
    if shape == "page_number":
        url = upstream.route("/r", page_number(data, size=2, with_total=True))
        src = source(
            url,
            records_path="data",
            pagination={"type": "page_number", "total_pages_path": "total_pages"},
        )
    elif shape == "cursor":
        url = upstream.route("/r", cursor(data, size=2))
        src = source(url, records_path="data", pagination=CURSOR)
    else:
        url = upstream.route("/r", next_url(data, size=2))
        src = source(
            url,
            records_path="results",
            pagination={"type": "next_url", "next_url_path": "links.next"},
        )

    first_two = []
    async with aclosing(iter_pages(http, src, Limits())) as pages:
        async for page in pages:
            first_two.append(page)
            if len(first_two) == 2:
                break  # the worker died here, after committing page 2 and its checkpoint
    assert len(upstream.hits("/r")) == 2  # pages are fetched only when asked for
    assert first_two[-1].next is not None
    stored = orjson.loads(orjson.dumps(first_two[-1].next.to_json()))
    upstream.requests.clear()

    async with UpstreamClient() as fresh:  # a new process, a new client
        rest = await collect(fresh, src, start=PageRequest.from_json(stored))

    assert rows(first_two) + rows(rest) == data
    assert len(upstream.hits("/r")) == 3
    assert [page.request.index for page in rest] == [2, 3, 4]


async def test_a_resumed_run_still_counts_earlier_pages_against_max_pages(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = make_records(10)
    url = upstream.route("/feed", cursor(data, size=2))
    src = source(url, records_path="data", pagination=CURSOR)
    checkpoint = PageRequest(url=url, params={"next_token": "4"}, index=2)

    seen, error = await collect_until_error(http, src, Limits(max_pages=3), start=checkpoint)

    assert isinstance(error, PageLimitReached)
    assert rows(seen) == data[4:6]
    assert len(upstream.hits("/feed")) == 1
