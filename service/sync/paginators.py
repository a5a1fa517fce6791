"""Where the next page is, and when to stop, for each pagination type of SPEC §3.

A `PageRequest` is plain data (JSON in the run's checkpoint), so a run can resume at
any page without replaying the ones before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

from service.sync.errors import BadConfig, TargetRefused
from service.sync.paths import MISSING, get_path
from service.sync.spec import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
    OffsetPagination,
    PageNumberPagination,
    Pagination,
    Source,
)


@dataclass(frozen=True, slots=True)
class PageRequest:
    url: str
    params: dict[str, Any] | None
    """Query parameters to send; None means the URL already carries them (next_url, Link)."""
    index: int = 0
    """How many pages came before this one."""

    def to_json(self) -> dict[str, Any]:
        # Not `dataclasses.asdict`: its deep copy was a fifth of a 304 page's run-side CPU.
        params = None if self.params is None else dict(self.params)
        return {"url": self.url, "params": params, "index": self.index}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PageRequest:
        return cls(url=data["url"], params=data.get("params"), index=int(data.get("index", 0)))


@dataclass(frozen=True, slots=True)
class PageResponse:
    """What the paginator may look at: the decoded body, headers and the record count."""

    body: Any
    headers: httpx.Headers
    url: str
    record_count: int


def first_request(source: Source) -> PageRequest:
    params: dict[str, Any] = dict(source.params)
    match source.pagination:
        case PageNumberPagination() as p:
            params[p.page_param] = p.start
            if p.size_param and p.size:
                params[p.size_param] = p.size
        case OffsetPagination() as p:
            params[p.offset_param] = p.start
            params[p.limit_param] = p.limit
    return PageRequest(url=str(source.url), params=params)


def next_request(
    pagination: Pagination, current: PageRequest, page: PageResponse
) -> PageRequest | None:
    match pagination:
        case NoPagination():
            return None
        case PageNumberPagination() as p:
            return _next_page_number(p, current, page)
        case OffsetPagination() as p:
            return _next_offset(p, current, page)
        case CursorPagination() as p:
            return _next_cursor(p, current, page)
        case NextUrlPagination() as p:
            return _follow(current, page, get_path(page.body, p.next_url_path))
        case LinkHeaderPagination():
            return _follow(current, page, _link_next(page.headers))
    raise BadConfig(f"unknown pagination {pagination!r}")  # pragma: no cover


def _with_params(current: PageRequest, **updates: Any) -> PageRequest:
    params = dict(current.params or {})
    params.update(updates)
    return PageRequest(url=current.url, params=params, index=current.index + 1)


def _as_int(value: Any, what: str) -> int | None:
    if value is MISSING or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadConfig(f"{what} is not a number")
    try:
        return int(value)
    except ValueError as exc:
        raise BadConfig(f"{what} is not a number") from exc


def _next_page_number(
    p: PageNumberPagination, current: PageRequest, page: PageResponse
) -> PageRequest | None:
    if page.record_count == 0 or (p.size and page.record_count < p.size):
        return None
    number = int((current.params or {}).get(p.page_param, p.start))
    if p.total_pages_path:
        total = _as_int(get_path(page.body, p.total_pages_path), "total_pages_path")
        # Pages are counted from `start`: with start=0, 3 pages are 0, 1 and 2.
        if total is not None and number - p.start + 1 >= total:
            return None
    return _with_params(current, **{p.page_param: number + 1})


def _next_offset(
    p: OffsetPagination, current: PageRequest, page: PageResponse
) -> PageRequest | None:
    if page.record_count < p.limit:
        return None
    if p.has_more_path:
        has_more = get_path(page.body, p.has_more_path)
        if has_more is not MISSING and not has_more:
            return None
    offset = int((current.params or {}).get(p.offset_param, p.start)) + page.record_count
    if p.total_path:
        total = _as_int(get_path(page.body, p.total_path), "total_path")
        if total is not None and offset >= total:
            return None
    return _with_params(current, **{p.offset_param: offset})


def _next_cursor(
    p: CursorPagination, current: PageRequest, page: PageResponse
) -> PageRequest | None:
    cursor = get_path(page.body, p.cursor_path)
    if cursor is MISSING or cursor is None or cursor == "":
        return None
    if isinstance(cursor, dict | list):
        raise BadConfig(f"cursor at {p.cursor_path!r} is not a scalar")
    return _with_params(current, **{p.cursor_param: cursor})


def _follow(current: PageRequest, page: PageResponse, target: Any) -> PageRequest | None:
    if target is MISSING or target is None or target == "":
        return None
    if not isinstance(target, str):
        raise BadConfig("next page URL is not a string")
    try:
        url = urljoin(page.url, target)
    except ValueError as exc:  # e.g. an unclosed IPv6 literal: no request can be made
        raise TargetRefused(f"the next page URL is not a valid URL ({exc})") from exc
    return PageRequest(url=url, params=None, index=current.index + 1)


def _link_next(headers: httpx.Headers) -> str | None:
    for value in headers.get_list("link"):
        for url, params in _parse_links(value):
            if "next" in params.get("rel", "").lower().split():
                return url
    return None


_LINK_TARGET = re.compile(r"[\s,]*<([^>]*)>")
_LINK_PARAM = re.compile(r'\s*;\s*([^\s=;,]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s;,]*))?')
_UNTIL_COMMA = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")*')
_QUOTED_PAIR = re.compile(r"\\(.)")


def _parse_links(value: str) -> list[tuple[str, dict[str, str]]]:
    """RFC 8288 links as (target, params), names lowercased, first occurrence kept.

    Commas, semicolons and `<` may appear inside `<...>` and inside quoted strings
    (`title="a; rel=next"`), so the value is scanned token by token, never split.
    """
    links: list[tuple[str, dict[str, str]]] = []
    position = 0
    while (target := _LINK_TARGET.match(value, position)) is not None:
        params: dict[str, str] = {}
        position = target.end()
        while (param := _LINK_PARAM.match(value, position)) is not None:
            params.setdefault(param.group(1).lower(), _unquote(param.group(2) or ""))
            position = param.end()
        links.append((target.group(1).strip(), params))
        position = _end_of_link(value, position)
    return links


def _end_of_link(value: str, position: int) -> int:
    """Skip anything malformed up to the comma that ends this link (quotes respected)."""
    rest = _UNTIL_COMMA.match(value, position)
    return rest.end() if rest else len(value)


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", raw[1:-1])
    return raw
