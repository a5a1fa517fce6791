"""Each auth type of SPEC §3 reaches the upstream where it belongs, on every page."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sync.client import UpstreamClient
from tests.fixtures.upstream import Upstream, link_header, make_records, next_url, page_number
from tests.sync.helpers import collect, rows, source


@pytest.mark.parametrize(
    ("auth", "header", "expected"),
    [
        ({"type": "bearer", "token": "tok-123"}, "authorization", "Bearer tok-123"),
        ({"type": "header", "name": "X-Api-Key", "value": "k-456"}, "x-api-key", "k-456"),
        (
            {"type": "basic", "username": "ann", "password": "p:ss wörd"},
            "authorization",
            "Basic " + base64.b64encode("ann:p:ss wörd".encode()).decode(),
        ),
    ],
)
async def test_header_auth_is_sent_on_every_page(
    upstream: Upstream, http: UpstreamClient, auth: dict[str, str], header: str, expected: str
) -> None:
    data = make_records(5)
    url = upstream.route("/secure", page_number(data, size=2))
    src = source(url, records_path="data", auth=auth, pagination={"type": "page_number", "size": 2})

    pages = await collect(http, src)

    assert rows(pages) == data
    hits = upstream.hits("/secure")
    assert len(hits) == 3
    assert [hit.headers.get(header) for hit in hits] == [expected] * 3
    assert all(set(hit.query) == {"page"} for hit in hits)  # nothing leaks into the URL


async def test_basic_auth_decodes_as_the_upstream_would(
    upstream: Upstream, http: UpstreamClient
) -> None:
    seen: list[str] = []

    def handler(request: Request) -> Response:
        scheme, _, encoded = request.headers["authorization"].partition(" ")
        seen.append(f"{scheme} {base64.b64decode(encoded).decode()}")
        return JSONResponse([])

    url = upstream.route("/basic", handler)

    await collect(http, source(url, auth={"type": "basic", "username": "ann", "password": ""}))

    assert seen == ["Basic ann:"]


async def test_no_auth_sends_no_credentials(upstream: Upstream, http: UpstreamClient) -> None:
    url = upstream.route("/open", lambda _: JSONResponse([]))

    await collect(http, source(url))

    (hit,) = upstream.hits("/open")
    assert "authorization" not in hit.headers
    assert hit.query == {}


@pytest.mark.parametrize("shape", ["next_url", "link_header"])
async def test_query_auth_is_added_to_urls_the_upstream_gave(
    upstream: Upstream, http: UpstreamClient, shape: str
) -> None:
    """next_url / Link pages carry no params of their own (None): the key must still go."""
    data = make_records(5)
    if shape == "next_url":
        handler = next_url(data, size=2)
        fields: dict[str, Any] = {
            "records_path": "results",
            "pagination": {"type": "next_url", "next_url_path": "links.next"},
        }
    else:
        handler = link_header(data, size=2)
        fields = {"pagination": {"type": "link_header"}}
    url = upstream.route("/keyed", handler)
    auth = {"type": "query", "name": "api_key", "value": "s3cret"}

    pages = await collect(http, source(url, auth=auth, **fields))

    assert rows(pages) == data
    hits = upstream.hits("/keyed")
    assert [hit.query.get("api_key") for hit in hits] == ["s3cret"] * 3
    assert [hit.query.get("from") for hit in hits] == [None, "2", "4"]
    assert all("authorization" not in hit.headers for hit in hits)


async def test_query_auth_echoed_in_next_url_is_sent_once_and_not_checkpointed(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """Some APIs echo the key into their next links; the checkpoint is stored in plain
    text, so the key must not end up in it — and it must not be sent twice."""
    raw_queries: list[str] = []

    def handler(request: Request) -> Response:
        raw_queries.append(request.url.query)
        page = int(request.query_params.get("page", 1))
        following = f"/echo?page={page + 1}&api_key=s3cret&x=1" if page < 3 else None
        return JSONResponse({"data": [{"id": page}], "next": following})

    url = upstream.route("/echo", handler)
    auth = {"type": "query", "name": "api_key", "value": "s3cret"}
    src = source(
        url,
        auth=auth,
        records_path="data",
        pagination={"type": "next_url", "next_url_path": "next"},
    )

    pages = await collect(http, src)

    assert rows(pages) == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert raw_queries == [
        "api_key=s3cret",
        "page=2&x=1&api_key=s3cret",
        "page=3&x=1&api_key=s3cret",
    ]
    checkpoints = [orjson.dumps(page.next.to_json()) for page in pages if page.next]
    assert len(checkpoints) == 2
    assert all(b"s3cret" not in checkpoint for checkpoint in checkpoints)


async def test_query_auth_joins_the_task_params(upstream: Upstream, http: UpstreamClient) -> None:
    url = upstream.route("/q", lambda _: JSONResponse([]))
    auth = {"type": "query", "name": "key", "value": "abc"}

    await collect(http, source(url, auth=auth, params={"start": "2026-01-01", "n": 5}))

    (hit,) = upstream.hits("/q")
    assert hit.query == {"start": "2026-01-01", "n": "5", "key": "abc"}


async def test_headers_and_post_body_reach_the_upstream(
    upstream: Upstream, http: UpstreamClient
) -> None:
    bodies: list[Any] = []

    async def handler(request: Request) -> Response:
        bodies.append(orjson.loads(await request.body()))
        return JSONResponse({"data": [{"id": 1}]})

    url = upstream.route("/search", handler)
    src = source(
        url,
        method="POST",
        body={"filter": {"since": "2026-01-01"}},
        headers={"Accept": "application/json", "X-Trace": "t1"},
        records_path="data",
        auth={"type": "bearer", "token": "tok"},
    )

    pages = await collect(http, src)

    assert rows(pages) == [{"id": 1}]
    (hit,) = upstream.hits("/search")
    assert hit.method == "POST"
    assert hit.headers["x-trace"] == "t1"
    assert hit.headers["authorization"] == "Bearer tok"
    assert bodies == [{"filter": {"since": "2026-01-01"}}]
