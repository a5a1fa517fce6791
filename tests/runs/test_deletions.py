"""`source.detect_deletions`: a run that read the whole collection and succeeded marks
the stored records it did not see as deleted, and the change feeds carry them."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fixtures.upstream import Upstream, make_records, page_number
from tests.helpers import create_task, feed, http_task, sync, wait_run

PAGES = {"type": "page_number", "page_param": "page"}
ONCE = {"max_attempts": 1, "initial_delay_seconds": 1}


def _answer(handler: Any, request: Request) -> Response:
    response: Response = handler(request)
    return response


async def _task(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    url: str,
    user_id: str | None = None,
    **source: Any,
) -> dict[str, Any]:
    body = http_task(url, records_path="data", pagination=PAGES, detect_deletions=True, **source)
    return await create_task(client, auth, {**body, "retry": ONCE, "user_id": user_id})


async def test_records_gone_upstream_reach_the_feed_as_deletions_and_come_back(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(30)
    served = list(records)
    url = upstream.route("/items", lambda request: page_number(served, size=10)(request))
    task = await _task(client, auth, url)
    first = await sync(client, auth, task["id"])
    assert (first["status"], first["stats"]["inserted"], first["stats"]["deleted"]) == (
        "succeeded",
        30,
        0,
    )
    before = {item["key"]: item for item in await feed(client, auth, task["id"])}
    mark = max(item["seq"] for item in before.values())

    gone = {records[i]["id"] for i in (0, 9, 10, 25, 29)}
    served[:] = [record for record in records if record["id"] not in gone]
    second = await sync(client, auth, task["id"])

    assert second["status"] == "succeeded"
    assert (second["stats"]["deleted"], second["stats"]["unchanged"]) == (5, 25)
    changes = await feed(client, auth, task["id"], after=mark)
    assert {item["key"] for item in changes} == gone  # nothing else moved
    for item in changes:
        assert (item["deleted"], item["data"]) == (True, None)
        assert item["seq"] > mark
    assert len({item["seq"] for item in changes}) == 5

    third = await sync(client, auth, task["id"])  # nothing changed: nothing new
    assert third["stats"]["deleted"] == 0
    assert await feed(client, auth, task["id"], after=max(i["seq"] for i in changes)) == []

    served[:] = records  # they come back
    mark = max(item["seq"] for item in changes)
    fourth = await sync(client, auth, task["id"])
    back = await feed(client, auth, task["id"], after=mark)
    assert {item["key"] for item in back} == gone
    assert all(not item["deleted"] and item["data"]["id"] in gone for item in back)
    assert (fourth["stats"]["deleted"], fourth["stats"]["inserted"]) == (0, 5)  # inserted again


async def test_a_failed_run_deletes_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(30)
    served, broken = list(records), [False]

    def handler(request: Request) -> Response:
        if broken[0] and request.query_params.get("page") == "3":
            return JSONResponse({"error": "gone wrong"}, status_code=404)
        return _answer(page_number(served, size=10), request)

    task = await _task(client, auth, upstream.route("/items", handler))
    await sync(client, auth, task["id"])
    served[:], broken[0] = records[:25], True  # 5 gone, but the run fails

    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed" and run["stats"]["deleted"] == 0
    items = await feed(client, auth, task["id"])
    assert len(items) == 30 and not any(item["deleted"] for item in items)


async def test_an_incremental_task_sweeps_only_on_a_full_refresh(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = [{"id": f"e{i}", "ts": f"2026-03-01T0{i}:00:00Z"} for i in range(6)]
    served = list(records)
    url = upstream.route("/events", lambda _: JSONResponse({"data": served}))
    incremental = {"cursor_path": "ts", "param": "since", "initial_value": "2026-01-01"}
    body = http_task(url, records_path="data", incremental=incremental, detect_deletions=True)
    task = await create_task(client, auth, body)
    await sync(client, auth, task["id"])
    served[:] = records[2:]

    incremental_run = await sync(client, auth, task["id"])
    assert incremental_run["stats"]["deleted"] == 0  # it read a window, not everything

    response = await client.post(
        f"/v1/tasks/{task['id']}/runs", json={"full_refresh": True}, headers=auth
    )
    assert response.status_code == 202, response.text
    refresh = await wait_run(client, auth, response.json()["id"])
    assert (refresh["status"], refresh["stats"]["deleted"]) == ("succeeded", 2)
    deleted = [item["key"] for item in await feed(client, auth, task["id"]) if item["deleted"]]
    assert sorted(deleted) == ["e0", "e1"]


async def test_a_conditional_task_that_detects_deletions_reads_every_page(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(20)
    served = list(records)

    def handler(request: Request) -> Response:
        if request.headers.get("if-none-match"):
            return Response(status_code=304)  # would hide the deletion if it were asked
        response = _answer(page_number(served, size=10), request)
        response.headers["ETag"] = '"same"'
        return response

    task = await _task(client, auth, upstream.route("/etag", handler), conditional=True)
    await sync(client, auth, task["id"])
    served[:] = records[1:]

    run = await sync(client, auth, task["id"])

    assert (run["stats"]["not_modified"], run["stats"]["deleted"]) == (0, 1)
    assert not any(hit.headers.get("if-none-match") for hit in upstream.hits("/etag"))


async def test_the_user_feed_carries_deletions_too(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(10)
    served = list(records)
    url = upstream.route("/items", lambda request: page_number(served, size=10)(request))
    task = await _task(client, auth, url, user_id="u_7")
    await sync(client, auth, task["id"])
    served[:] = records[1:]
    await sync(client, auth, task["id"])

    response = await client.get(
        "/v1/records/changes", params={"user_id": "u_7", "limit": 100}, headers=auth
    )
    items = response.json()["items"]
    deleted = [item for item in items if item["deleted"]]
    assert [(item["task_id"], item["key"]) for item in deleted] == [(task["id"], records[0]["id"])]
    assert len(items) == 10  # the record's deletion replaced its insertion in the feed
