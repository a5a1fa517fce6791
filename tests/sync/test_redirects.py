"""Redirects, followed by the engine hop by hop: each hop checked like a first request,
methods and bodies kept or dropped per status, credentials kept within the origin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from service.config import Settings
from service.http_client import create_upstream_client
from service.sync import TargetRefused
from service.sync.client import UpstreamClient
from service.sync.errors import BadRedirect, TooManyRedirects
from tests.fixtures.upstream import Upstream
from tests.sync.helpers import collect, rows, source


@pytest.fixture
async def guarded() -> AsyncIterator[UpstreamClient]:
    """Private targets blocked; only the upstream's exact address is allow-listed."""
    settings = Settings(
        _env_file=None,
        allowed_targets=["127.0.0.1/32", "localhost"],
    )
    async with create_upstream_client(settings) as client:
        yield client


def redirect(location: str, status: int = 302) -> Any:
    return lambda _: RedirectResponse(location, status_code=status)


def port_of(upstream: Upstream) -> int:
    port = httpx.URL(upstream.base_url).port
    assert port is not None
    return port


# ---- every hop is checked -----------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local"),
        ("http://10.0.0.5:6379/", "10.0.0.5 is a private address"),
        ("http://127.0.0.2:{port}/data", "127.0.0.2 is a loopback address"),
        ("http://[::ffff:127.0.0.2]:{port}/data", "IPv4-mapped 127.0.0.2"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme 'gopher' is not allowed"),
        ("http://admin:pw@127.0.0.1:{port}/data", "credentials in the URL"),
    ],
)
async def test_a_redirect_to_a_forbidden_target_is_refused_at_the_hop(
    upstream: Upstream, guarded: UpstreamClient, location: str, expected: str
) -> None:
    upstream.route("/data", lambda _: JSONResponse([{"id": 1}]))
    url = upstream.route("/jump", redirect(location.format(port=port_of(upstream))))

    with pytest.raises(TargetRefused, match=expected) as caught:
        await collect(guarded, source(url))

    assert caught.value.retryable is False
    assert [seen.path for seen in upstream.requests] == ["/jump"]


async def test_a_redirect_chain_of_five_is_followed(
    upstream: Upstream, guarded: UpstreamClient
) -> None:
    for hop in range(5):
        upstream.route(f"/hop{hop}", redirect(f"/hop{hop + 1}"))
    upstream.route("/hop5", lambda _: JSONResponse([{"id": 1}]))

    pages = await collect(guarded, source(upstream.base_url + "/hop0"))

    assert rows(pages) == [{"id": 1}]
    assert pages[0].fetched.url.endswith("/hop5")
    assert len(upstream.requests) == 6


async def test_a_redirect_chain_of_six_fails(upstream: Upstream, guarded: UpstreamClient) -> None:
    for hop in range(6):
        upstream.route(f"/hop{hop}", redirect(f"/hop{hop + 1}"))
    upstream.route("/hop6", lambda _: JSONResponse([{"id": 1}]))

    with pytest.raises(TooManyRedirects) as caught:
        await collect(guarded, source(upstream.base_url + "/hop0"))

    assert caught.value.code == "too_many_redirects"
    assert caught.value.retryable is False
    assert [seen.path for seen in upstream.requests] == [f"/hop{n}" for n in range(6)]


async def test_an_unparseable_location_is_a_bad_redirect(
    upstream: Upstream, guarded: UpstreamClient
) -> None:
    url = upstream.route(
        "/odd", lambda _: Response(status_code=302, headers={"Location": "http://[::1/"})
    )

    with pytest.raises(BadRedirect) as caught:
        await collect(guarded, source(url))

    assert caught.value.code == "bad_redirect"


# ---- methods and bodies -------------------------------------------------------------


def echo(bodies: list[tuple[str, Any]]) -> Any:
    async def handler(request: Request) -> Response:
        raw = await request.body()
        bodies.append((request.method, orjson.loads(raw) if raw else None))
        return JSONResponse([{"id": 1}])

    return handler


@pytest.mark.parametrize("status", [307, 308])
async def test_307_and_308_keep_the_method_and_the_body(
    upstream: Upstream, guarded: UpstreamClient, status: int
) -> None:
    bodies: list[tuple[str, Any]] = []
    upstream.route("/new", echo(bodies))
    url = upstream.route("/old", redirect("/new", status))
    src = source(url, method="POST", body={"filter": {"since": "2026-01-01"}})

    pages = await collect(guarded, src)

    assert rows(pages) == [{"id": 1}]
    assert bodies == [("POST", {"filter": {"since": "2026-01-01"}})]
    (hit,) = upstream.hits("/new")
    assert hit.headers["content-type"] == "application/json"


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_301_302_303_turn_a_post_into_a_bodyless_get(
    upstream: Upstream, guarded: UpstreamClient, status: int
) -> None:
    bodies: list[tuple[str, Any]] = []
    upstream.route("/new", echo(bodies))
    url = upstream.route("/old", redirect("/new", status))

    await collect(guarded, source(url, method="POST", body={"q": 1}))

    assert bodies == [("GET", None)]
    (hit,) = upstream.hits("/new")
    assert "content-type" not in hit.headers
    assert "content-length" not in hit.headers


# ---- credentials --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        ({"type": "bearer", "token": "tok-1"}, "authorization"),
        ({"type": "header", "name": "X-Api-Key", "value": "k-2"}, "x-api-key"),
        ({"type": "basic", "username": "ann", "password": "pw"}, "authorization"),
    ],
)
async def test_credentials_stay_within_the_origin(
    upstream: Upstream, guarded: UpstreamClient, auth: dict[str, str], header: str
) -> None:
    """127.0.0.1 and localhost are the same server but not the same origin: a redirect
    to another origin must not carry the task's credentials there."""
    port = port_of(upstream)
    upstream.route("/here", redirect("/there"))
    upstream.route("/there", redirect(f"http://localhost:{port}/elsewhere"))
    upstream.route("/elsewhere", lambda _: JSONResponse([{"id": 1}]))

    pages = await collect(guarded, source(upstream.base_url + "/here", auth=auth))

    assert rows(pages) == [{"id": 1}]
    sent = {seen.path: header in seen.headers for seen in upstream.requests}
    assert sent == {"/here": True, "/there": True, "/elsewhere": False}
    assert upstream.hits("/elsewhere")[0].headers["host"] == f"localhost:{port}"


async def test_cookies_from_one_response_never_ride_on_the_next_request(
    upstream: Upstream, guarded: UpstreamClient
) -> None:
    """One client serves every tenant's tasks: it keeps no cookies at all."""
    upstream.route(
        "/login",
        lambda _: JSONResponse([], headers={"Set-Cookie": "session=tenant-a; Path=/"}),
    )
    upstream.route("/jump", redirect("/data"))
    upstream.route("/data", lambda _: JSONResponse([]))

    await collect(guarded, source(upstream.base_url + "/login"))
    await collect(guarded, source(upstream.base_url + "/jump"))

    assert [seen.headers.get("cookie") for seen in upstream.requests] == [None, None, None]
    assert not guarded.cookies
