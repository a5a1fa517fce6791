"""Incremental sync: the watermark, the lag, full refreshes and backfills (SPEC §3)."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, wait_run


def _events(count: int, start_hour: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": f"e{start_hour + i}", "ts": f"2026-03-01T{start_hour + i:02d}:00:00Z"}
        for i in range(count)
    ]


def since_api(events: list[dict[str, Any]]) -> Any:
    """An upstream that returns events at or after `since` (and before `until`)."""

    def handler(request: Request) -> Response:
        since = request.query_params.get("since", "")
        until = request.query_params.get("until", "9999")
        return JSONResponse({"data": [e for e in events if since <= e["ts"] < until]})

    return handler


INCREMENTAL = {
    "cursor_path": "ts",
    "param": "since",
    "end_param": "until",
    "initial_value": "2026-01-01T00:00:00Z",
    "lag_seconds": 0,
}


async def _run(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str, body: Any = None
) -> dict[str, Any]:
    response = await client.post(f"/v1/tasks/{task_id}/runs", json=body, headers=auth)
    assert response.status_code == 202, response.text
    return await wait_run(client, auth, response.json()["id"])


async def test_the_watermark_bounds_the_next_run_and_the_boundary_is_not_double_counted(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    events = _events(3)
    url = upstream.route("/events", since_api(events))
    task = await create_task(
        client, auth, http_task(url, records_path="data", incremental=INCREMENTAL)
    )

    first = await _run(client, auth, task["id"])
    assert first["stats"]["inserted"] == 3
    assert upstream.hits("/events")[0].query["since"] == "2026-01-01T00:00:00Z"
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert shown["watermark"] == "2026-03-01T02:00:00Z"

    events.extend(_events(2, start_hour=3))
    second = await _run(client, auth, task["id"])

    assert upstream.hits("/events")[1].query["since"] == "2026-03-01T02:00:00Z"
    assert (second["stats"]["inserted"], second["stats"]["unchanged"]) == (
        2,
        1,
    )  # e2 again: unchanged
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert shown["watermark"] == "2026-03-01T04:00:00Z"


async def test_lag_is_subtracted_from_timestamps(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/lagged", since_api(_events(2)))
    incremental = {**INCREMENTAL, "lag_seconds": 1800}
    task = await create_task(
        client, auth, http_task(url, records_path="data", incremental=incremental)
    )
    await _run(client, auth, task["id"])
    await _run(client, auth, task["id"])
    assert upstream.hits("/lagged")[1].query["since"] == "2026-03-01T00:30:00Z"  # 01:00 - 30 min


async def test_full_refresh_starts_over_and_backfill_leaves_the_watermark_alone(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/history", since_api(_events(5)))
    task = await create_task(
        client, auth, http_task(url, records_path="data", incremental=INCREMENTAL)
    )
    await _run(client, auth, task["id"])

    refresh = await _run(client, auth, task["id"], {"full_refresh": True})
    assert upstream.hits("/history")[1].query["since"] == "2026-01-01T00:00:00Z"
    assert refresh["stats"]["unchanged"] == 5

    backfill = {"backfill": {"from": "2026-03-01T01:00:00Z", "to": "2026-03-01T03:00:00Z"}}
    window = await _run(client, auth, task["id"], backfill)
    query = upstream.hits("/history")[2].query
    assert (query["since"], query["until"]) == ("2026-03-01T01:00:00Z", "2026-03-01T03:00:00Z")
    assert window["stats"]["records_seen"] == 2
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert shown["watermark"] == "2026-03-01T04:00:00Z"


async def test_epoch_number_watermarks_compare_as_numbers(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    rows = [{"id": 1, "t": 9}, {"id": 2, "t": 10}, {"id": 3, "t": 8}]
    url = upstream.route("/epoch", lambda _r: JSONResponse(rows))
    incremental = {"cursor_path": "t", "param": "after"}
    task = await create_task(client, auth, http_task(url, incremental=incremental))
    await _run(client, auth, task["id"])
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert shown["watermark"] == 10  # not "9" > "10" as text
    assert "after" not in upstream.hits("/epoch")[0].query  # no initial value: nothing sent
    await _run(client, auth, task["id"])
    assert upstream.hits("/epoch")[1].query["after"] == "10"


async def test_a_backfill_needs_an_incremental_source_a_full_refresh_does_not(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    task = await create_task(client, auth, http_task(upstream.base_url + "/plain"))
    window = {"from": "2026-01-01", "to": "2026-02-01"}
    response = await client.post(
        f"/v1/tasks/{task['id']}/runs", json={"backfill": window}, headers=auth
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["body", "backfill"]

    refresh = await client.post(
        f"/v1/tasks/{task['id']}/runs", json={"full_refresh": True}, headers=auth
    )
    assert refresh.status_code == 202, refresh.text
