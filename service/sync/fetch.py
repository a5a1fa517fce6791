"""One HTTP request for one page: auth applied, redirects followed and checked hop by hop,
the host's budget respected, size capped while streaming, JSON decoded, a transient
failure tried again in place (`request_retry`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import orjson

from service.sync.backoff import parse_retry_after
from service.sync.body import FIRST_BYTES, read_body, reserve_decoding
from service.sync.budget import HostBudget, host_key
from service.sync.client import UpstreamClient
from service.sync.conditional import page_digest, records_digest
from service.sync.envelope import paginates_without_records, split_records
from service.sync.errors import (
    BadRedirect,
    CutOff,
    InvalidBody,
    TooManyRedirects,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from service.sync.inflight import BodyBudget, BodyHold
from service.sync.paginators import PageRequest
from service.sync.request_retry import REQUEST_RETRY, RequestRetry, RetryCount, with_retries
from service.sync.spec import BasicAuth, BearerAuth, HeaderAuth, Limits, QueryAuth, Source
from service.sync.ssrf import check_url, default_port

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_HOLDING_STATUSES = (429, 503)
"""Answers whose `Retry-After` holds back every task on the host, not just this run."""


@dataclass(frozen=True, slots=True)
class FetchedPage:
    status: int
    body: Any
    headers: httpx.Headers
    url: str
    """The final URL (after redirects), without a query-parameter credential."""
    nbytes: int
    digest: str | None = None
    """`page_digest` of the body, when asked for with `digest_seed`."""
    retries: int = 0
    """Requests for this page before the one that answered: transient failures tried
    again in place (`request_retry`)."""
    hold: BodyHold | None = None
    """What the decoded body holds of the process's `BodyBudget`, until its page is
    released (`Page.release`)."""
    records_digest: str | None = None
    """`records_digest` of the records' bytes, where they sit in an object
    (`envelope.split_records`) and a `digest_seed` was given."""
    records_unread: bool = False
    """Only the envelope was decoded (`body` holds `envelope.RECORDS_LEFT_OUT` where the
    records are): their bytes are the ones stored (`fetch_page`'s `records_known`)."""


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
    client: UpstreamClient,
    source: Source,
    page: PageRequest,
    limits: Limits,
    url: httpx.URL | None = None,
) -> httpx.Request:
    """`url`: `page.url` already parsed, if it is at hand."""
    auth_headers, auth_params = _auth_parts(source)
    if auth_params:  # a credential: never kept in the process-wide cache of `_with_params`
        target = _merged(url or httpx.URL(page.url), {**(page.params or {}), **auth_params})
    else:
        target = _with_params(url or httpx.URL(page.url), page.params or {})
    return client.build_request(
        source.method,
        target,
        headers={**source.headers, **auth_headers},
        json=source.body if source.method == "POST" else None,
        timeout=httpx.Timeout(limits.timeout_seconds),
    )


def _with_params(url: httpx.URL, params: dict[str, Any]) -> httpx.URL:
    """`_merged`, kept for the next request of the same page (a resync asks for the same
    pages run after run, and an `httpx.URL` is never changed in place): the merge parses
    the whole URL again, about a tenth of a 304 page's CPU in the engine (cProfile,
    session 13)."""
    if not params:
        return url
    try:
        return _merged_once(url, tuple(params.items()))
    except TypeError:  # a value that is a list: merged each time
        return _merged(url, params)


@functools.lru_cache(maxsize=1024)
def _merged_once(url: httpx.URL, params: tuple[tuple[str, Any], ...]) -> httpx.URL:
    return _merged(url, dict(params))


def _merged(url: httpx.URL, params: dict[str, Any]) -> httpx.URL:
    """`url` with `params` merged into its own query.

    Not `params=`: httpx replaces the whole query string with it, dropping a next link's
    `?page=2` or a query written into `source.url`. Without params the URL is left
    byte for byte as the upstream wrote it (signed next links must not be re-encoded).
    """
    return url.copy_merge_params(params) if params else url


async def fetch_page(
    client: UpstreamClient,
    source: Source,
    page: PageRequest,
    limits: Limits,
    *,
    budget: HostBudget | None = None,
    bodies: BodyBudget | None = None,
    extra_headers: dict[str, str] | None = None,
    digest_seed: bytes | None = None,
    undecoded_if: str | None = None,
    records_known: str | None = None,
    retry: RequestRetry = REQUEST_RETRY,
    retries: RetryCount | None = None,
) -> FetchedPage:
    """One page, following up to `MAX_REDIRECTS` redirects by hand; with `digest_seed`,
    the body's digest too, and the body is left undecoded (None) when the digest is
    `undecoded_if`; and the digest of its records' bytes, where the source's records
    sit in an object (`envelope.split_records`): when that digest is `records_known`,
    only the envelope around the records is decoded (`FetchedPage.records_unread`) where
    the source's pagination can go on from the envelope alone, else the whole body.

    By hand, so each hop is a request like the first: its URL's shape checked, its
    host's budget waited on, credentials kept only within the origin. (Addresses are
    checked where the connection is made: `ssrf.GuardedBackend`.)

    A transient failure is tried again from the first hop as `retry` allows; each try
    waits on the budget again. `retries` (kept by the caller) counts them as they go.

    With `bodies`, the body holds its share of the process's in-flight bytes (waiting for
    room first) from before its request until the caller releases the page
    (`FetchedPage.hold`); an undecoded body holds nothing once fetched.
    """
    count = retries if retries is not None else RetryCount()
    fetched = await with_retries(
        lambda: _fetch_once(
            client,
            source,
            page,
            limits,
            budget,
            bodies,
            extra_headers,
            (digest_seed, undecoded_if, records_known),
        ),
        retry,
        count,
    )
    return replace(fetched, retries=count.value) if count.value else fetched


async def _fetch_once(
    client: UpstreamClient,
    source: Source,
    page: PageRequest,
    limits: Limits,
    budget: HostBudget | None,
    bodies: BodyBudget | None,
    extra_headers: dict[str, str] | None,
    known: _Known,
) -> FetchedPage:
    url = check_url(page.url)  # as written: httpx would read `file:/x` as a relative URL
    request = build_request(client, source, page, limits, url)
    if extra_headers:
        request.headers.update(extra_headers)
    hold = bodies.hold() if bodies is not None else None
    try:
        if hold is not None:
            await hold.grow(FIRST_BYTES)
        for _hop in range(MAX_REDIRECTS + 1):
            check_url(request.url)
            if budget is not None:
                await budget.acquire(host_key(request.url), limits.requests_per_second)
            response, raw = await _exchange(client, request, limits, budget, bodies, hold)
            if raw is not None:
                return await _fetched(source, response, raw, bodies, hold, known)
            request = redirect_request(request, response, _secret_headers(source))
        raise TooManyRedirects(f"upstream redirected more than {MAX_REDIRECTS} times")
    except BaseException:
        if hold is not None:
            hold.release()
        raise


_Known = tuple[bytes | None, str | None, str | None]
"""`fetch_page`'s `digest_seed`, `undecoded_if` and `records_known`."""


async def _fetched(
    source: Source,
    response: httpx.Response,
    raw: bytearray,
    bodies: BodyBudget | None,
    hold: BodyHold | None,
    known: _Known,
) -> FetchedPage:
    """The final answer as a page: its digests, and its body decoded unless it is the one
    stored (then it holds nothing of the process's budget any longer), or only its
    envelope when its records are the stored ones (`fetch_page`)."""
    seed, undecoded_if, records_known = known
    status = response.status_code
    digest = page_digest(seed, raw) if seed and status != 304 else None
    undecoded = status == 304 or (digest is not None and digest == undecoded_if)
    parts = split_records(raw, source.records_path) if seed and not undecoded else None
    of_records = None
    if seed and parts is not None:
        of_records = records_digest(seed, memoryview(parts.records))
    records_unread = (
        parts is not None and of_records == records_known and paginates_without_records(source)
    )
    if undecoded and hold is not None:
        hold.release()
        hold = None
    elif hold is not None:
        await reserve_decoding(raw, bodies, hold)
    body: Any = None
    if parts is not None and records_unread:
        body = parts.body()  # after the reservation: a field beside the records may be large
        records_unread = body is not None
    if body is None and not undecoded:
        body = _decode(raw, status, response.headers)
    return FetchedPage(
        status,
        body,
        response.headers,
        without_query_auth(source, str(response.url)),
        len(raw),
        digest,
        hold=hold,
        records_digest=of_records,
        records_unread=records_unread,
    )


async def _exchange(
    client: UpstreamClient,
    request: httpx.Request,
    limits: Limits,
    budget: HostBudget | None,
    bodies: BodyBudget | None,
    hold: BodyHold | None,
) -> tuple[httpx.Response, bytearray | None]:
    """One hop: the final response and its body, or a redirect (body unread, None).

    httpx's timeouts are per phase (connect, each read...): an upstream that trickles a
    byte at a time never trips them, so a deadline bounds each hop as a whole. Budget
    waits happen before it: they are ours, not the upstream's slowness.
    """
    try:
        with _translated(limits.timeout_seconds, request.url):
            async with asyncio.timeout(limits.timeout_seconds) as deadline:
                return await _send(
                    client, request, limits.max_response_bytes, bodies, hold, deadline
                )
    except UpstreamStatusError as exc:
        if budget is not None and exc.retry_after and exc.http_status in _HOLDING_STATUSES:
            await budget.hold(host_key(request.url), exc.retry_after)
        raise


@contextlib.contextmanager
def _translated(timeout: float, url: httpx.URL) -> Iterator[None]:
    """httpx's failures in a run's terms (`url`: the hop's, named in the message)."""
    try:
        yield
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise UpstreamTimeout(
            f"upstream timed out after {timeout:g}s ({type(exc).__name__})"
        ) from exc
    except httpx.RemoteProtocolError as exc:
        raise CutOff("upstream closed the connection mid-response") from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(_unreachable(exc, url)) from exc
    except httpx.DecodingError as exc:
        raise InvalidBody("upstream body does not match its Content-Encoding") from exc


async def _send(
    client: UpstreamClient,
    request: httpx.Request,
    limit: int,
    bodies: BodyBudget | None,
    hold: BodyHold | None,
    deadline: asyncio.Timeout,
) -> tuple[httpx.Response, bytearray | None]:
    response = await client.send_once(request)
    log.debug("upstream %s %s: %s", request.method, request.url, response.status_code)
    try:
        if response.has_redirect_location:
            return response, None
        if response.status_code == 304:  # only ever an answer to our conditional request
            # Read to its (empty) end, or the connection would be closed, not reused; raw,
            # as there is nothing to decode.
            async for _chunk in response.aiter_raw():
                pass
            return response, bytearray()
        if not 200 <= response.status_code < 300:
            raise UpstreamStatusError(
                response.status_code,
                response.reason_phrase,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return response, await read_body(response, limit, bodies, hold, deadline)
    finally:
        await response.aclose()


# ---- redirects ------------------------------------------------------------------------


def redirect_request(
    request: httpx.Request, response: httpx.Response, secret_headers: Iterable[str]
) -> httpx.Request:
    """The next hop: 307/308 keep method and body, 301/302/303 become a body-less GET."""
    url = _redirect_url(request, response)
    headers = httpx.Headers(request.headers)
    headers["Host"] = url.netloc.decode("ascii")
    headers.pop("Cookie", None)
    if not _keeps_credentials(request.url, url):
        for name in secret_headers:
            headers.pop(name, None)
    method = request.method
    stream: httpx.AsyncByteStream | httpx.SyncByteStream | None = request.stream
    if response.status_code in (301, 302, 303) and method != "HEAD":
        method, stream = "GET", None
        for name in ("Content-Length", "Content-Type", "Transfer-Encoding"):
            headers.pop(name, None)
    return httpx.Request(method, url, headers=headers, stream=stream, extensions=request.extensions)


def _redirect_url(request: httpx.Request, response: httpx.Response) -> httpx.URL:
    """Relative or absolute."""
    location = response.headers["location"]
    try:
        return request.url.join(location)
    except httpx.InvalidURL as exc:
        raise BadRedirect(f"upstream redirected to an invalid URL ({exc})") from exc


def _keeps_credentials(old: httpx.URL, new: httpx.URL) -> bool:
    """Same origin, or the same host upgraded from http to https (as httpx and browsers)."""
    if old.host != new.host:
        return False
    before, after = (old.scheme, default_port(old)), (new.scheme, default_port(new))
    return before == after or (before, after) == (("http", 80), ("https", 443))


def _secret_headers(source: Source) -> tuple[str, ...]:
    """Headers that must not follow a redirect to another origin: they carry credentials."""
    auth_headers, _ = _auth_parts(source)
    return ("Authorization", *auth_headers)


def _unreachable(exc: httpx.TransportError, url: httpx.URL) -> str:
    """Why no connection was made, told apart: a name that does not resolve is a typo or
    a DNS problem on our side, a refused connection is the upstream's host being up with
    nothing listening. Both stay `upstream_unavailable` (either may pass); the message is
    what points the reader at the right one. httpx keeps the socket error as a cause."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return f"could not resolve host {url.host} ({cause.strerror or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {host}:{default_port(url)}"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"could not reach upstream {host}:{default_port(url)} ({detail})"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it was raised from, innermost last (each once: chains can loop)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _decode(raw: bytearray, status: int, headers: httpx.Headers) -> Any:
    """The JSON body; otherwise an error naming what came instead (an HTML login or error
    page from a proxy or the wrong URL says more in its content type than in its bytes)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        media_type = headers.get("content-type", "").split(";")[0].strip()
        shown = f"Content-Type {media_type}" if media_type else "no Content-Type"
        raise InvalidBody(
            f"upstream body is not valid JSON ({shown}, {len(raw)} bytes)", http_status=status
        ) from exc
