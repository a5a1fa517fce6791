"""One HTTP request for one page: auth applied, size capped while streaming, JSON decoded."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from service.sync.errors import InvalidBody, ResponseTooLarge, UpstreamStatusError, UpstreamUnavailable
from service.sync.paginators import PageRequest
from service.sync.spec import BasicAuth, BearerAuth, HeaderAuth, Limits, QueryAuth, Source


@dataclass(frozen=True, slots=True)
class FetchedPage:
    status: int
    body: Any
    headers: httpx.Headers
    url: str
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


def build_request(client: httpx.AsyncClient, source: Source, page: PageRequest, limits: Limits) -> httpx.Request:
    auth_headers, auth_params = _auth_parts(source)
    params = {**(page.params or {}), **auth_params}
    return client.build_request(
        source.method,
        page.url,
        params=params or None,
        headers={**source.headers, **auth_headers},
        json=source.body if source.method == "POST" else None,
        timeout=httpx.Timeout(limits.timeout_seconds),
    )


async def fetch_page(
    client: httpx.AsyncClient, source: Source, page: PageRequest, limits: Limits
) -> FetchedPage:
    request = build_request(client, source, page, limits)
    try:
        response = await client.send(request, stream=True)
        try:
            if not 200 <= response.status_code < 300:
                raise UpstreamStatusError(response.status_code, response.reason_phrase)
            raw = await _read_capped(response, limits.max_response_bytes)
        finally:
            await response.aclose()
    except httpx.TimeoutException as exc:
        raise UpstreamUnavailable(f"upstream timed out ({type(exc).__name__})", code="upstream_timeout") from exc
    except httpx.RemoteProtocolError as exc:
        raise InvalidBody("upstream closed the connection mid-response") from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(f"could not reach upstream ({type(exc).__name__})") from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidBody(f"upstream body is not valid JSON ({len(raw)} bytes)", http_status=response.status_code) from exc
    return FetchedPage(response.status_code, body, response.headers, str(response.url), len(raw))


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
