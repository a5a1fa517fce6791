"""`Idempotency-Key` on POST /v1/tasks and POST /v1/tasks/{id}/runs: replay, mismatch,
scoping, expiry, and what is (not) stored."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse

from service.db import SessionMaker
from service.models.types import utcnow
from tests.fixtures.app import MakeKey
from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, wait_run
from tests.idempotency.conftest import backdate, sql

URL = "https://api.example.com/items"
PROBLEM = "application/problem+json"


def keyed(auth: dict[str, str], key: str) -> dict[str, str]:
    return {**auth, "Idempotency-Key": key}


async def task_ids(client: httpx.AsyncClient, auth: dict[str, str]) -> list[str]:
    response = await client.get("/v1/tasks", headers=auth)
    assert response.status_code == 200, response.text
    return [task["id"] for task in response.json()["items"]]


async def run_ids(client: httpx.AsyncClient, auth: dict[str, str], task_id: str) -> list[str]:
    response = await client.get(f"/v1/tasks/{task_id}/runs", headers=auth)
    assert response.status_code == 200, response.text
    return [run["id"] for run in response.json()["items"]]


def assert_replay_of(replay: httpx.Response, first: httpx.Response) -> None:
    assert replay.status_code == first.status_code
    assert replay.content == first.content
    for name in ("content-type", "location"):
        assert replay.headers.get(name) == first.headers.get(name)
    assert replay.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers


async def test_a_retried_create_replays_the_first_response_and_creates_nothing(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = http_task(URL, name="daily")
    first = await client.post("/v1/tasks", json=body, headers=keyed(auth, "create-1"))
    replay = await client.post("/v1/tasks", json=body, headers=keyed(auth, "create-1"))

    assert first.status_code == 201, first.text
    assert first.headers["location"] == f"/v1/tasks/{first.json()['id']}"
    assert_replay_of(replay, first)
    assert await task_ids(client, auth) == [first.json()["id"]]
    # The keyed answer is the same document the API serves for the task.
    shown = await client.get(first.headers["location"], headers=auth)
    assert shown.content == first.content


async def test_a_retried_trigger_replays_the_first_response(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, http_task(URL))
    first = await client.post(f"/v1/tasks/{task['id']}/runs", headers=keyed(auth, "k"))
    replay = await client.post(f"/v1/tasks/{task['id']}/runs", headers=keyed(auth, "k"))

    assert first.status_code == 202, first.text
    assert first.headers["location"] == f"/v1/runs/{first.json()['id']}"
    assert_replay_of(replay, first)
    assert await run_ids(client, auth, task["id"]) == [first.json()["id"]]
    shown = await client.get(first.headers["location"], headers=auth)
    assert shown.content == first.content


async def test_the_same_key_with_another_body_or_query_is_422(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    first = await client.post("/v1/tasks", json=http_task(URL, name="a"), headers=keyed(auth, "k"))
    assert first.status_code == 201, first.text

    other_body = await client.post(
        "/v1/tasks", json=http_task(URL, name="b"), headers=keyed(auth, "k")
    )
    other_query = await client.post(
        "/v1/tasks",
        params={"on_conflict": "keep"},
        json=http_task(URL, name="a"),
        headers=keyed(auth, "k"),
    )

    for response in (other_body, other_query):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["type"] == "urn:backsync:problem:idempotency-key-mismatch"
        assert "different request" in problem["detail"]
    assert await task_ids(client, auth) == [first.json()["id"]]


async def test_concurrent_identical_requests_create_exactly_one_task(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = http_task(URL, name="racy")
    responses = await asyncio.gather(
        *(client.post("/v1/tasks", json=body, headers=keyed(auth, "race")) for _ in range(5))
    )

    created = [r for r in responses if r.status_code == 201]
    busy = [r for r in responses if r.status_code == 409]
    assert len(created) + len(busy) == 5, [r.text for r in responses]
    originals = [r for r in created if "idempotent-replayed" not in r.headers]
    assert len(originals) == 1  # whichever claimed the key first; the rest replay it
    assert {r.content for r in created} == {originals[0].content}
    for response in busy:
        assert response.json()["type"] == "urn:backsync:problem:idempotency-key-in-use"
        assert response.headers["retry-after"] == "1"
    assert await task_ids(client, auth) == [originals[0].json()["id"]]
    # Once the first is done, every retry is a replay.
    again = await client.post("/v1/tasks", json=body, headers=keyed(auth, "race"))
    assert_replay_of(again, originals[0])


async def test_keys_belong_to_one_tenant(
    client: httpx.AsyncClient, auth: dict[str, str], make_key: MakeKey
) -> None:
    other = await make_key("globex")
    body = http_task(URL, name="shared-name")
    mine = await client.post("/v1/tasks", json=body, headers=keyed(auth, "k"))
    theirs = await client.post("/v1/tasks", json=body, headers=keyed(other, "k"))

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    assert await task_ids(client, auth) == [mine.json()["id"]]
    assert await task_ids(client, other) == [theirs.json()["id"]]


async def test_keys_belong_to_one_endpoint_and_path(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    first = await client.post("/v1/tasks", json=http_task(URL, name="a"), headers=keyed(auth, "k"))
    second = await create_task(client, auth, http_task(URL, name="b"))
    runs = [
        await client.post(f"/v1/tasks/{task_id}/runs", headers=keyed(auth, "k"))
        for task_id in (first.json()["id"], second["id"])
    ]

    assert first.status_code == 201
    for run in runs:
        assert run.status_code == 202, run.text
        assert "idempotent-replayed" not in run.headers
    assert runs[0].json()["task_id"] != runs[1].json()["task_id"]


async def test_an_expired_record_is_replaced_by_the_next_request(
    client: httpx.AsyncClient, auth: dict[str, str], sessionmaker: SessionMaker
) -> None:
    old = await client.post("/v1/tasks", json=http_task(URL, name="a"), headers=keyed(auth, "k"))
    await backdate(sessionmaker, expires_at=utcnow() - timedelta(seconds=1))

    new = await client.post("/v1/tasks", json=http_task(URL, name="b"), headers=keyed(auth, "k"))

    assert new.status_code == 201, new.text
    assert "idempotent-replayed" not in new.headers
    assert sorted(await task_ids(client, auth)) == sorted([old.json()["id"], new.json()["id"]])
    replay = await client.post("/v1/tasks", json=http_task(URL, name="b"), headers=keyed(auth, "k"))
    assert_replay_of(replay, new)


async def test_a_replayed_trigger_queues_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/once", lambda _r: JSONResponse([{"id": 1}]))
    task = await create_task(client, auth, http_task(url))
    first = await client.post(f"/v1/tasks/{task['id']}/runs", headers=keyed(auth, "sync-1"))
    assert first.status_code == 202, first.text
    done = await wait_run(client, auth, first.json()["id"])
    assert done["status"] == "succeeded"

    # Without a key this would start a second run now that the first has finished.
    replay = await client.post(f"/v1/tasks/{task['id']}/runs", headers=keyed(auth, "sync-1"))
    assert_replay_of(replay, first)
    assert replay.json()["status"] == "queued"  # the first answer, as it was
    await asyncio.sleep(0.3)  # time for a wrongly queued job to reach the upstream
    assert await run_ids(client, auth, task["id"]) == [first.json()["id"]]
    assert len(upstream.hits("/once")) == 1


async def test_a_404_is_stored_and_replayed(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    path = "/v1/tasks/tsk_doesnotexist/runs"
    first = await client.post(path, headers=keyed(auth, "k"))
    replay = await client.post(path, headers=keyed(auth, "k"))

    assert first.status_code == 404
    assert first.headers["content-type"] == PROBLEM
    assert_replay_of(replay, first)


async def test_a_final_422_from_the_service_is_stored_and_replayed(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = {**http_task(URL), "schedule": {"every_seconds": 1}}  # under the minimum interval
    first = await client.post("/v1/tasks", json=body, headers=keyed(auth, "k"))
    replay = await client.post("/v1/tasks", json=body, headers=keyed(auth, "k"))

    assert first.status_code == 422
    assert first.json()["type"] == "urn:backsync:problem:validation"
    assert_replay_of(replay, first)


async def test_a_409_is_not_stored_so_a_retry_runs_again(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = http_task(URL, name="taken")
    holder = await create_task(client, auth, body)
    conflict = await client.post("/v1/tasks", json=body, headers=keyed(auth, "k"))
    assert conflict.status_code == 409
    assert conflict.json()["type"] == "urn:backsync:problem:conflict"

    assert (await client.delete(f"/v1/tasks/{holder['id']}", headers=auth)).status_code == 204
    retry = await client.post("/v1/tasks", json=body, headers=keyed(auth, "k"))
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers


async def test_a_request_that_fails_validation_stores_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], sessionmaker: SessionMaker
) -> None:
    invalid = await client.post("/v1/tasks", json={"name": 42}, headers=keyed(auth, "k"))
    assert invalid.status_code == 422
    assert await sql(sessionmaker, "SELECT key FROM idempotency_key") == []

    valid = await client.post("/v1/tasks", json=http_task(URL), headers=keyed(auth, "k"))
    assert valid.status_code == 201, valid.text


async def test_an_unexpected_error_frees_the_key(
    settings: Any,
    auth: dict[str, str],
    sessionmaker: SessionMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asgi_lifespan import LifespanManager

    from service.app import create_app
    from service.runs import service as runs_service

    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app, raise_app_exceptions=False),
            base_url="http://backsync",
        ) as client,
    ):
        task = await create_task(client, auth, http_task(URL))
        path = f"/v1/tasks/{task['id']}/runs"

        async def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("boom")

        with monkeypatch.context() as patch:
            patch.setattr(runs_service, "trigger", broken)
            failed = await client.post(path, headers=keyed(auth, "k"))
        assert failed.status_code == 500
        assert await sql(sessionmaker, "SELECT key FROM idempotency_key") == []

        retry = await client.post(path, headers=keyed(auth, "k"))
        assert retry.status_code == 202, retry.text
        assert "idempotent-replayed" not in retry.headers


async def test_requests_without_a_key_store_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], sessionmaker: SessionMaker
) -> None:
    task = await create_task(client, auth, http_task(URL))
    response = await client.post(f"/v1/tasks/{task['id']}/runs", headers=auth)
    assert response.status_code == 202
    assert "idempotent-replayed" not in response.headers
    assert await sql(sessionmaker, "SELECT key FROM idempotency_key") == []


async def test_a_path_longer_than_the_scope_column_still_works(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    path = f"/v1/tasks/tsk_{'x' * 1000}/runs"
    first = await client.post(path, headers=keyed(auth, "k"))
    replay = await client.post(path, headers=keyed(auth, "k"))
    assert first.status_code == 404
    assert_replay_of(replay, first)
