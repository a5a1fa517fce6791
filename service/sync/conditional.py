"""Conditional requests: ask "has this page changed?" and let a 304 answer "no".

A validator is what the upstream said about one page URL last time (`ETag`,
`Last-Modified`) plus where that page pointed next: a 304 has no body, so the walk
continues from the remembered next page.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from service.sync.paginators import PageRequest


@dataclass(frozen=True, slots=True)
class Validator:
    etag: str | None
    last_modified: str | None
    next_page: dict[str, Any] | None


ValidatorLookup = Callable[[str], Awaitable[Validator | None]]


def page_key(request: PageRequest) -> str:
    """Identity of a page URL: the URL and its parameters, in a stable order."""
    canonical = orjson.dumps([request.url, request.params], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def conditional_headers(validator: Validator) -> dict[str, str]:
    headers: dict[str, str] = {}
    if validator.etag:
        headers["If-None-Match"] = validator.etag
    if validator.last_modified:
        headers["If-Modified-Since"] = validator.last_modified
    return headers


def validator_from(headers: httpx.Headers, following: PageRequest | None) -> Validator | None:
    etag, last_modified = headers.get("etag"), headers.get("last-modified")
    if not etag and not last_modified:
        return None
    return Validator(etag, last_modified, following.to_json() if following else None)


def resumed(validator: Validator, request: PageRequest) -> PageRequest | None:
    """The page after a 304, from what the page said last time."""
    if validator.next_page is None:
        return None
    return PageRequest.from_json({**validator.next_page, "index": request.index + 1})
