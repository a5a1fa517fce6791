"""Conditional requests: validators per page URL, 304 pages cost no database write."""

from __future__ import annotations

import hashlib

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fixtures.upstream import Upstream, cursor, make_records
from tests.helpers import create_task, feed, http_task, sync

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}


def etagged(handler: object, *, use_last_modified: bool = False) -> object:
    """Wrap a JSON handler with ETag (or Last-Modified) and 304 support."""

    def wrapped(request: Request) -> Response:
        response: Response = handler(request)  # type: ignore[operator]
        body = bytes(response.body)
        tag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        stamp = (
            "Wed, 01 Jan 2026 00:00:00 GMT"
            if body.count(b'version":1')
            else "Thu, 02 Jan 2026 00:00:00 GMT"
        )
        if use_last_modified:
            if request.headers.get("if-modified-since") == stamp:
                return Response(status_code=304)
            response.headers["Last-Modified"] = stamp
        else:
            if request.headers.get("if-none-match") == tag:
                return Response(status_code=304, headers={"ETag": tag})
            response.headers["ETag"] = tag
        return response

    return wrapped


async def test_an_unchanged_resync_is_all_304s_and_writes_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(30)
    url = upstream.route("/cond", etagged(cursor(records, size=10)))  # type: ignore[arg-type]
    body = http_task(url, records_path="data", pagination=CURSOR, conditional=True)
    task = await create_task(client, auth, body)
    first = await sync(client, auth, task["id"])
    assert first["stats"]["inserted"] == 30
    assert all("if-none-match" not in seen.headers for seen in upstream.hits("/cond"))
    before = await feed(client, auth, task["id"])

    second = await sync(client, auth, task["id"])

    assert second["status"] == "succeeded"
    assert second["stats"]["not_modified"] == 3
    assert second["stats"]["pages"] == 3
    assert (second["stats"]["records_seen"], second["stats"]["bytes"]) == (0, 0)
    resent = upstream.hits("/cond")[3:]
    # walked via stored next pages, each once (fetched ahead together, so in any order)
    assert sorted(seen.query.get("next_token", "") for seen in resent) == ["", "10", "20"]
    assert all(seen.headers.get("if-none-match", "").startswith('"') for seen in resent)
    assert await feed(client, auth, task["id"]) == before


async def test_a_changed_page_is_fetched_and_stored_while_the_others_stay_304(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(30)
    url = upstream.route("/cond2", etagged(cursor(records, size=10)))  # type: ignore[arg-type]
    task = await create_task(
        client, auth, http_task(url, records_path="data", pagination=CURSOR, conditional=True)
    )
    await sync(client, auth, task["id"])
    records[15]["version"] = 2

    run = await sync(client, auth, task["id"])

    assert run["stats"]["not_modified"] == 2
    assert (run["stats"]["updated"], run["stats"]["unchanged"]) == (1, 9)
    changed = [
        item for item in await feed(client, auth, task["id"]) if item["data"]["version"] == 2
    ]
    assert [item["key"] for item in changed] == [records[15]["id"]]


async def test_last_modified_is_sent_as_if_modified_since(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    rows = make_records(3)
    url = upstream.route("/lm", etagged(lambda _r: JSONResponse(rows), use_last_modified=True))  # type: ignore[arg-type]
    task = await create_task(client, auth, http_task(url, conditional=True))
    await sync(client, auth, task["id"])
    run = await sync(client, auth, task["id"])
    assert run["stats"]["not_modified"] == 1
    assert upstream.hits("/lm")[1].headers["if-modified-since"] == "Wed, 01 Jan 2026 00:00:00 GMT"


async def test_without_conditional_no_validators_are_sent(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    rows = make_records(3)
    url = upstream.route("/plain", etagged(lambda _r: JSONResponse(rows)))  # type: ignore[arg-type]
    task = await create_task(client, auth, http_task(url))
    await sync(client, auth, task["id"])
    run = await sync(client, auth, task["id"])
    assert run["stats"]["not_modified"] == 0
    assert run["stats"]["unchanged"] == 3
    assert "if-none-match" not in upstream.hits("/plain")[1].headers
