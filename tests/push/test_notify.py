"""Calling a push URL runs its task, with a real worker, Redis, database and upstream:
trigger "push", coalesced, debounced, never before its time."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
from starlette.responses import JSONResponse

from service.broker.queue import Queue
from service.config import Settings
from service.db import create_engine, create_sessionmaker
from service.models.types import utcnow
from service.runs import repository
from tests.fixtures.app import running_worker
from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, feed, http_task, wait_run
from tests.push.helpers import make_push_url, push_path

RECORDS = [{"id": "a1", "steps": 8123}, {"id": "a2", "steps": 9001}]


async def _runs(client: httpx.AsyncClient, auth: dict[str, str], task_id: str) -> list[Any]:
    response = await client.get(f"/v1/tasks/{task_id}/runs", headers=auth)
    items: list[Any] = response.json()["items"]
    return items


async def _push_task(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, **task: Any
) -> tuple[dict[str, Any], str]:
    url = upstream.route("/activity", lambda _r: JSONResponse({"data": RECORDS}))
    created = await create_task(client, auth, {**http_task(url, records_path="data"), **task})
    return created, push_path(await make_push_url(client, auth, created["id"]))


async def test_a_push_runs_the_task_with_trigger_push_and_its_records_land(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    task, path = await _push_task(client, auth, upstream)

    response = await client.post(path, json={"object_type": "activity", "object_id": 1})
    assert response.status_code == 202
    assert response.json() == {"outcome": "started", "starts_at": None}
    (run,) = await _runs(client, auth, task["id"])
    final = await wait_run(client, auth, run["id"])

    assert (final["trigger"], final["status"]) == ("push", "succeeded")
    assert {item["key"] for item in await feed(client, auth, task["id"])} == {"a1", "a2"}
    (listed,) = (await client.get(f"/v1/tasks/{task['id']}/push-urls", headers=auth)).json()[
        "items"
    ]
    assert listed["call_count"] == 1 and listed["last_called_at"] is not None


async def test_a_burst_of_pushes_with_debounce_gives_one_run_after_the_debounce(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    # 3 s: the burst below must fit in the debounce even on a loaded machine
    task, path = await _push_task(client, auth, upstream, debounce_seconds=3)
    assert task["debounce_seconds"] == 3
    first_push = utcnow()

    answers = [await client.post(path)]
    for _ in range(9):
        await asyncio.sleep(0.02)
        answers.append(await client.post(path, content=b"userid=12345&appli=1"))
    assert [a.status_code for a in answers] == [202] * 10
    outcomes = [a.json()["outcome"] for a in answers]
    assert outcomes == ["started"] + ["coalesced"] * 9
    starts = {a.json()["starts_at"] for a in answers}
    assert len(starts) == 1  # every push of the burst joined the one run
    (run,) = await _runs(client, auth, task["id"])
    assert run["status"] == "queued" and run["next_attempt_at"] is not None

    final = await wait_run(client, auth, run["id"])
    assert final["status"] == "succeeded"
    started = datetime.fromisoformat(final["started_at"])
    assert started >= first_push + timedelta(seconds=3)
    assert len(await _runs(client, auth, task["id"])) == 1
    assert len(upstream.hits("/activity")) == 1
    (listed,) = (await client.get(f"/v1/tasks/{task['id']}/push-urls", headers=auth)).json()[
        "items"
    ]
    assert listed["call_count"] == 10


async def test_a_push_while_a_run_is_active_joins_it(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    task, path = await _push_task(client, auth, upstream)
    manual = await client.post(f"/v1/tasks/{task['id']}/runs", headers=auth)
    response = await client.post(path)
    assert response.status_code == 202
    assert response.json()["outcome"] == "coalesced"
    assert [run["id"] for run in await _runs(client, auth, task["id"])] == [manual.json()["id"]]


async def test_a_paused_task_takes_pushes_without_running(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    task, path = await _push_task(client, auth, upstream, paused=True)
    response = await client.post(path)
    assert response.status_code == 202
    assert response.json() == {"outcome": "paused", "starts_at": None}
    assert await _runs(client, auth, task["id"]) == []


async def test_put_and_the_answer_status_a_provider_needs(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    task, _ = await _push_task(client, auth, upstream)
    strava = push_path(await make_push_url(client, auth, task["id"], response_status=200))
    fitbit = push_path(await make_push_url(client, auth, task["id"], response_status=204))

    assert (await client.put(strava)).status_code == 200
    answered = await client.post(fitbit, json=[{"collectionType": "activities"}])
    assert (answered.status_code, answered.content) == (204, b"")
    assert len(await _runs(client, auth, task["id"])) == 1


async def test_a_body_over_the_cap_is_413_and_nothing_runs(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    task, path = await _push_task(client, auth, upstream)
    too_big = b"x" * (settings.push_max_body_bytes + 1)
    response = await client.post(path, content=too_big)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"

    async def chunks() -> Any:
        for _ in range(settings.push_max_body_bytes // 1024 + 1):
            yield b"y" * 1024

    assert (await client.post(path, content=chunks())).status_code == 413
    assert await _runs(client, auth, task["id"]) == []
    assert (await client.post(path, content=b"z" * 1024)).status_code == 202


async def test_a_debounced_run_is_neither_claimed_nor_re_sent_before_its_time(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    task, path = await _push_task(client, auth, upstream, debounce_seconds=30)
    assert (await client.post(path)).status_code == 202
    (run,) = await _runs(client, auth, task["id"])
    not_before = datetime.fromisoformat(run["next_attempt_at"])

    queue = await Queue.connect(settings)  # a job that reaches a worker early
    try:
        await queue.enqueue_run(run["id"], job_suffix="early")
    finally:
        await queue.close()
    async with running_worker(settings) as arq_worker:
        while arq_worker.jobs_complete < 1:  # the early job ran, and found nothing to do
            await asyncio.sleep(0.02)
    shown = (await client.get(f"/v1/runs/{run['id']}", headers=auth)).json()
    assert (shown["status"], shown["started_at"]) == ("queued", None)
    assert upstream.hits("/activity") == []

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            now = utcnow()
            assert await repository.orphans(session, now, now + timedelta(seconds=1)) == []
            late = not_before + timedelta(seconds=11)
            orphans = await repository.orphans(session, late, late - timedelta(seconds=10))
    finally:
        await engine.dispose()
    assert [orphan.id for orphan in orphans] == [run["id"]]
