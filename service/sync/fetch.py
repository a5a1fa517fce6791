"""One HTTP request for one page: auth applied, size capped while streaming, JSON decoded."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, replace
from typing import Any

import httpx
import orjson

from service.sync.errors import (
    InvalidBody,
    ResponseTooLarge,
    TooManyRedirects,
    UpstreamStatusError,
    UpstreamUnavailable,
)
from service.sync.paginators import PageRequest
from service.sync.spec import BasicAuth, BearerAuth, HeaderAuth, Limits, QueryAuth, Source


@dataclass(frozen=True, slots=True)
class FetchedPage:
    status: int
    body: Any
    headers: httpx.Headers
    url: str
    """The final URL (after redirects), without a query-parameter credential."""
    nbytes: int


def _auth_parts(source: Source) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and query parameters that carry the task's credentials."""
    match source.auth:
        case BearerAuth(token=token):
            return {"Authorization": f"Bearer {token}"}, {}
        case HeaderAuth(name=name, value=value):
            return {name: value}, {}
        case QueryAuth(name=name, value=value):
            return {}, {name: value}
        case BasicAuth(username=user, password=password):
            raw = base64.b64encode(f"{user}:{password}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}, {}
    return {}, {}


def without_query_auth(source: Source, url: str) -> str:
    """`url` minus a query-parameter credential, for anything that is shown or stored.

    Upstreams often echo the key into their next links; checkpoints are stored in plain
    text, and `build_request` adds the credential back on every request anyway.
    """
    if not isinstance(source.auth, QueryAuth):
        return url
    parsed = httpx.URL(url)
    if source.auth.name not in parsed.params:
        return url
    return str(parsed.copy_remove_param(source.auth.name))


def strip_query_auth(source: Source, request: PageRequest | None) -> PageRequest | None:
    """The next request as it may be checkpointed (see `without_query_auth`)."""
    if request is None:
        return None
    url = without_query_auth(source, request.url)
    return request if url == request.url else replace(request, url=url)


def build_request(
    client: httpx.AsyncClient, source: Source, page: PageRequest, limits: Limits
) -> httpx.Request:
    auth_headers, auth_params = _auth_parts(source)
    return client.build_request(
        source.method,
        _with_params(page.url, {**(page.params or {}), **auth_params}),
        headers={**source.headers, **auth_headers},
        json=source.body if source.method == "POST" else None,
        timeout=httpx.Timeout(limits.timeout_seconds),
    )


def _with_params(url: str, params: dict[str, Any]) -> httpx.URL:
    """`url` with `params` merged into its own query.

    Not `params=`: httpx replaces the whole query string with it, dropping a next link's
    `?page=2` or a query written into `source.url`. Without params the URL is left
    byte for byte as the upstream wrote it (signed next links must not be re-encoded).
    """
    parsed = httpx.URL(url)
    return parsed.copy_merge_params(params) if params else parsed


async def fetch_page(
    client: httpx.AsyncClient, source: Source, page: PageRequest, limits: Limits
) -> FetchedPage:
    request = build_request(client, source, page, limits)
    try:
        # httpx's timeouts are per phase (connect, each read...): an upstream that
        # trickles a byte at a time never trips them. The deadline bounds the whole.
        async with asyncio.timeout(limits.timeout_seconds):
            response, raw = await _send(client, request, limits.max_response_bytes)
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise UpstreamUnavailable(
            f"upstream timed out after {limits.timeout_seconds:g}s ({type(exc).__name__})",
            code="upstream_timeout",
        ) from exc
    except httpx.RemoteProtocolError as exc:
        raise InvalidBody("upstream closed the connection mid-response") from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(f"could not reach upstream ({type(exc).__name__})") from exc
    except httpx.DecodingError as exc:
        raise InvalidBody("upstream body does not match its Content-Encoding") from exc
    except httpx.TooManyRedirects as exc:
        raise TooManyRedirects("upstream redirected more times than allowed") from exc
    return FetchedPage(
        response.status_code,
        _decode(raw, response.status_code),
        response.headers,
        without_query_auth(source, str(response.url)),
        len(raw),
    )


async def _send(
    client: httpx.AsyncClient, request: httpx.Request, limit: int
) -> tuple[httpx.Response, bytes]:
    response = await client.send(request, stream=True)
    try:
        if not 200 <= response.status_code < 300:
            raise UpstreamStatusError(response.status_code, response.reason_phrase)
        return response, await _read_capped(response, limit)
    finally:
        await response.aclose()


def _decode(raw: bytes, status: int) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidBody(
            f"upstream body is not valid JSON ({len(raw)} bytes)", http_status=status
        ) from exc


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge(f"response of {declared} bytes exceeds max_response_bytes={limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise ResponseTooLarge(f"response exceeds max_response_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)
