"""Triggering: coalescing, cancel, and how failures are reported."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from service.db import create_engine, create_sessionmaker, locked_transaction
from service.worker import make_worker
from tests.fixtures.upstream import Upstream, cursor, make_records, slowly
from tests.helpers import create_task, http_task, sync, trigger, wait_run

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}


async def test_trigger_returns_202_with_location_then_the_active_run_with_200(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    task = await create_task(client, auth, http_task(upstream.base_url + "/x"))
    first = await client.post(f"/v1/tasks/{task['id']}/runs", headers=auth)
    second = await client.post(f"/v1/tasks/{task['id']}/runs", headers=auth)

    assert first.status_code == 202
    assert first.headers["location"] == f"/v1/runs/{first.json()['id']}"
    assert first.json()["status"] == "queued"
    assert first.json()["trigger"] == "manual"
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]


async def test_concurrent_triggers_make_exactly_one_run(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    task = await create_task(client, auth, http_task(upstream.base_url + "/x"))
    responses = await asyncio.gather(
        *(client.post(f"/v1/tasks/{task['id']}/runs", headers=auth) for _ in range(8))
    )
    assert {r.status_code for r in responses} <= {200, 202}
    assert sorted(r.status_code for r in responses).count(202) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    history = await client.get(f"/v1/tasks/{task['id']}/runs", headers=auth)
    assert len(history.json()["items"]) == 1


async def test_a_finished_run_lets_the_next_trigger_start_a_new_one(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/one", lambda _r: JSONResponse([{"id": 1}]))
    task = await create_task(client, auth, http_task(url))
    first = await sync(client, auth, task["id"])
    second = await sync(client, auth, task["id"])

    assert first["id"] != second["id"]
    assert (first["status"], second["status"]) == ("succeeded", "succeeded")
    history = (await client.get(f"/v1/tasks/{task['id']}/runs", headers=auth)).json()["items"]
    assert [run["id"] for run in history] == [second["id"], first["id"]]  # newest first
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert shown["last_run"]["id"] == second["id"]
    assert shown["last_success_at"] is not None


async def test_cancelling_a_queued_run_ends_it_and_the_worker_does_not_fetch(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Any
) -> None:
    url = upstream.route("/never", lambda _r: JSONResponse([{"id": 1}]))
    task = await create_task(client, auth, http_task(url))
    run = await trigger(client, auth, task["id"])

    cancelled = await client.post(f"/v1/runs/{run['id']}/cancel", headers=auth)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None

    arq_worker = make_worker(settings, burst=True, handle_signals=False)
    await arq_worker.async_run()  # drains the queue, including the cancelled run's job
    await arq_worker.close()
    assert upstream.hits("/never") == []
    again = await client.post(f"/v1/runs/{run['id']}/cancel", headers=auth)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


async def test_a_cancel_racing_a_claim_asks_the_claimed_run_to_stop_instead_of_ending_it(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Any
) -> None:
    """A worker's claim that commits while a cancel is under way must not be overwritten:
    the run is running, so the cancel asks it to stop, and a worker holding it keeps a
    run that says so (not a run marked `cancelled` while it fetches)."""
    task = await create_task(client, auth, http_task(upstream.base_url + "/x"))
    run = await trigger(client, auth, task["id"])
    engine = create_engine(settings.database_url)
    try:
        async with locked_transaction(create_sessionmaker(engine)) as claim:
            await claim.execute(
                text(
                    "UPDATE run SET status = 'running', lease_owner = 'w', started_at = :now,"
                    " lease_expires_at = :now WHERE id = :id"
                ),
                {"id": run["id"], "now": datetime.now(UTC)},
            )
            cancel = asyncio.create_task(client.post(f"/v1/runs/{run['id']}/cancel", headers=auth))
            await asyncio.sleep(0.3)
            assert not cancel.done()  # waiting for the claim's row (or SQLite's write lock)
        response = await cancel
        async with engine.connect() as connection:
            stored = (
                await connection.execute(
                    text("SELECT status, cancel_requested FROM run WHERE id = :id"),
                    {"id": run["id"]},
                )
            ).one()
    finally:
        await engine.dispose()

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["cancel_requested"]) == ("running", True)
    assert (stored[0], bool(stored[1])) == ("running", True)


async def test_cancelling_a_running_run_stops_it_at_the_next_page(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(50)
    pages = cursor(records, size=5)

    url = upstream.route("/slow", slowly(pages, 0.1))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    run = await trigger(client, auth, task["id"])
    await wait_run(client, auth, run["id"], until={"running"})
    while (await client.get(f"/v1/runs/{run['id']}", headers=auth)).json()["stats"]["pages"] < 1:
        await asyncio.sleep(0.02)

    response = await client.post(f"/v1/runs/{run['id']}/cancel", headers=auth)
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    final = await wait_run(client, auth, run["id"])

    assert final["status"] == "cancelled"
    assert 1 <= final["stats"]["pages"] < 10
    assert final["stats"]["inserted"] == final["stats"]["pages"] * 5  # committed pages are kept
    # committed pages, plus at most the one fetched ahead while the last one committed
    assert final["stats"]["pages"] <= len(upstream.hits("/slow")) <= final["stats"]["pages"] + 1


async def test_an_upstream_4xx_fails_the_run_with_a_clear_error(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/gone", lambda _r: JSONResponse({"error": "nope"}, status_code=404))
    task = await create_task(client, auth, http_task(url))
    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed"
    assert run["error"] == {
        "code": "upstream_status",
        "message": "upstream answered 404 Not Found",
        "http_status": 404,
        "retryable": False,
    }
    assert run["finished_at"] is not None
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert shown["consecutive_failures"] == 1
    assert shown["last_success_at"] is None


async def test_a_records_path_that_is_not_a_list_fails_as_bad_config(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/odd", lambda _r: JSONResponse({"data": {"id": 1}}))
    task = await create_task(client, auth, http_task(url, records_path="data"))
    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed"
    assert run["error"]["code"] == "bad_config"
    assert "records_path" in run["error"]["message"]


async def test_garbage_from_the_upstream_fails_the_run_without_storing_anything(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route(
        "/garbage", lambda _r: Response(b"{not json", media_type="application/json")
    )
    task = await create_task(client, auth, {**http_task(url), "retry": {"max_attempts": 1}})
    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed"
    assert run["error"]["code"] == "invalid_body"
    assert run["stats"]["inserted"] == 0
    records = await client.get(f"/v1/tasks/{task['id']}/records", headers=auth)
    assert records.json()["items"] == []
