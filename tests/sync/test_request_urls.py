"""A page's request URL: its parameters merged into the URL's own query, kept for the
next request of the same page unless a credential is among them."""

from __future__ import annotations

import uuid

import httpx

from service.sync import Limits, PageRequest
from service.sync.client import UpstreamClient
from service.sync.fetch import _merged_once, build_request
from tests.sync.helpers import source


async def test_a_pages_merged_url_is_kept_for_its_next_request(http: UpstreamClient) -> None:
    path = f"/items-{uuid.uuid4().hex}"  # a URL no other test has asked for
    src = source(f"http://127.0.0.1{path}?sort=asc")
    page = PageRequest(f"http://127.0.0.1{path}?sort=asc&page=2", {"after": "t 1"}, 1)
    before = _merged_once.cache_info()

    first = build_request(http, src, page, Limits())
    again = build_request(http, src, PageRequest(page.url, {"after": "t 1"}, 1), Limits())

    assert str(first.url) == f"http://127.0.0.1{path}?sort=asc&page=2&after=t+1"
    assert again.url == first.url
    after = _merged_once.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)


async def test_a_credential_in_the_query_is_never_kept(http: UpstreamClient) -> None:
    src = source(
        "http://127.0.0.1/items", auth={"type": "query", "name": "api_key", "value": "s3cret"}
    )
    page = PageRequest("http://127.0.0.1/items", {"page": "2"}, 1)
    before = _merged_once.cache_info()

    request = build_request(http, src, page, Limits())

    assert request.url.params == httpx.QueryParams({"page": "2", "api_key": "s3cret"})
    assert _merged_once.cache_info() == before


async def test_a_list_of_values_is_merged_without_the_cache(http: UpstreamClient) -> None:
    src = source("http://127.0.0.1/items")
    page = PageRequest("http://127.0.0.1/items", {"tag": ["a", "b"]}, 1)
    before = _merged_once.cache_info()

    request = build_request(http, src, page, Limits())

    assert request.url.params.get_list("tag") == ["a", "b"]
    assert _merged_once.cache_info() == before
