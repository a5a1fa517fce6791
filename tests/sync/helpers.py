"""Shared helpers for the engine's tests: build a Source, run the page loop, read rows back."""

from __future__ import annotations

from typing import Any

import orjson

from service.sync import Limits, Page, PageRequest, RequestRetry, Source, SyncError, iter_pages
from service.sync.client import UpstreamClient

QUICK = RequestRetry(base_delay=0.01, max_delay=0.02)
"""The engine's tries, with waits too short to slow a test down (a `Retry-After` is still
honoured: the waits are never shorter than it)."""

ONCE = RequestRetry(tries=1)
"""No retry in place: for tests about what one answer does."""


def source(url: str, **fields: Any) -> Source:
    """A Source as the API would accept it; `primary_key` defaults to `id`."""
    return Source.model_validate({"url": url, "primary_key": "id", **fields})


async def collect(
    client: UpstreamClient,
    src: Source,
    limits: Limits | None = None,
    start: PageRequest | None = None,
    retry: RequestRetry = QUICK,
) -> list[Page]:
    pages = iter_pages(client, src, limits or Limits(), start, retry=retry)
    return [page async for page in pages]


def rows(pages: list[Page]) -> list[Any]:
    """The stored data of every row, decoded, in page order."""
    return [orjson.loads(row.data) for page in pages for row in page.records.rows]


def queries(hits: list[Any], name: str) -> list[str | None]:
    """The value of one query parameter in each recorded request."""
    return [hit.query.get(name) for hit in hits]


async def collect_until_error(
    client: UpstreamClient,
    src: Source,
    limits: Limits | None = None,
    start: PageRequest | None = None,
    retry: RequestRetry = QUICK,
) -> tuple[list[Page], SyncError]:
    """The pages the loop yielded before it failed, and the failure."""
    pages: list[Page] = []
    try:
        async for page in iter_pages(client, src, limits or Limits(), start, retry=retry):
            pages.append(page)
    except SyncError as exc:
        return pages, exc
    raise AssertionError(f"the page loop ended without an error after {len(pages)} pages")
