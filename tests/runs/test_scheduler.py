"""The scheduler in every worker starts each due slot once: real workers, Redis and
database. Slots are made due by moving `next_run_at` in the database and publishing a
schedule change, as a PATCH does, so no test waits out a real interval."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import bindparam, text

from service.broker.queue import schedules_channel
from service.config import Settings
from service.db import SessionMaker, create_engine, create_sessionmaker
from service.models.types import UTCDateTime, utcnow
from tests.fixtures.app import SpawnWorker, api_client, running_worker
from tests.fixtures.upstream import Upstream, make_records, page_number, slowly
from tests.helpers import create_task, http_task, wait_run

RARELY = {"cron": "0 0 29 2 *", "timezone": "UTC"}
"""Its own next slot is years away (29 February), so a test sees only the slots it makes
due; an `every_seconds` task's next slot can fall inside the test (it has a random phase)."""
_MOVE = text("UPDATE task SET next_run_at = :at WHERE id = :id").bindparams(
    bindparam("at", type_=UTCDateTime())
)


class Clock:
    """Moves tasks' slots in the database and tells the schedulers, as the API does."""

    def __init__(self, sessionmaker: SessionMaker, redis: Redis, settings: Settings) -> None:
        self.sessionmaker, self.redis, self.settings = sessionmaker, redis, settings

    async def due_at(self, at: datetime | None, *task_ids: str) -> None:
        async with self.sessionmaker() as session:
            for task_id in task_ids:
                await session.execute(_MOVE, {"at": at, "id": task_id})
            await session.commit()
        await self.redis.publish(schedules_channel(self.settings.queue_name), b"")

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.sessionmaker() as session:
            return (await session.execute(text(sql), params)).scalar()


@pytest.fixture
async def clock(settings: Settings) -> AsyncIterator[Clock]:
    engine = create_engine(settings.database_url)
    redis = Redis.from_url(settings.redis_url or "")
    try:
        yield Clock(create_sessionmaker(engine), redis, settings)
    finally:
        await redis.aclose()
        await engine.dispose()


async def _runs(client: httpx.AsyncClient, auth: dict[str, str], task_id: str) -> list[Any]:
    response = await client.get(f"/v1/tasks/{task_id}/runs", headers=auth)
    assert response.status_code == 200, response.text
    runs: list[Any] = response.json()["items"]
    return runs


async def _until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _scheduled_task(
    client: httpx.AsyncClient, auth: dict[str, str], url: str, name: str = "t1"
) -> dict[str, Any]:
    return await create_task(
        client, auth, {**http_task(url, name=name, records_path="data"), "schedule": RARELY}
    )


async def test_a_due_slot_starts_one_scheduled_run_and_moves_to_the_next_slot(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, clock: Clock, worker: Any
) -> None:
    url = upstream.route("/items", page_number(make_records(5), size=10))
    task = await _scheduled_task(client, auth, url)
    assert task["next_run_at"] is not None
    assert await _runs(client, auth, task["id"]) == []

    await clock.due_at(utcnow() - timedelta(seconds=1), task["id"])

    await _until(lambda: _has_runs(client, auth, task["id"], 1))
    runs = await _runs(client, auth, task["id"])
    assert [run["trigger"] for run in runs] == ["schedule"]
    assert (await wait_run(client, auth, runs[0]["id"]))["status"] == "succeeded"
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    moved = datetime.fromisoformat(shown["next_run_at"])
    assert (moved.month, moved.day, moved.hour, moved.minute) == (2, 29, 0, 0)
    assert moved > utcnow()
    await asyncio.sleep(0.5)
    assert len(await _runs(client, auth, task["id"])) == 1  # the slot fired once


async def _has_runs(client: httpx.AsyncClient, auth: dict[str, str], task_id: str, n: int) -> bool:
    return len(await _runs(client, auth, task_id)) >= n


async def test_slots_missed_while_down_give_one_catch_up_run(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, clock: Clock, worker: Any
) -> None:
    url = upstream.route("/items", page_number(make_records(5), size=10))
    task = await _scheduled_task(client, auth, url)

    await clock.due_at(utcnow() - timedelta(days=1), task["id"])  # 1,440 slots missed

    await _until(lambda: _has_runs(client, auth, task["id"], 1))
    await asyncio.sleep(1.0)
    assert len(await _runs(client, auth, task["id"])) == 1
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert datetime.fromisoformat(shown["next_run_at"]) > utcnow()


async def test_a_slot_whose_previous_run_is_active_is_skipped_and_counted(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, clock: Clock, worker: Any
) -> None:
    url = upstream.route("/slow", slowly(page_number(make_records(5), size=10), 3.0))
    task = await _scheduled_task(client, auth, url)
    trigger = await client.post(f"/v1/tasks/{task['id']}/runs", headers=auth)
    assert trigger.status_code == 202
    await wait_run(client, auth, trigger.json()["id"], until={"running"})

    await clock.due_at(utcnow() - timedelta(seconds=1), task["id"])

    async def skipped() -> bool:
        count = await clock.scalar("SELECT skipped_runs FROM task WHERE id = :id", id=task["id"])
        return bool(count)

    await _until(skipped)
    runs = await _runs(client, auth, task["id"])
    assert [run["trigger"] for run in runs] == ["manual"]  # not stacked
    assert await clock.scalar("SELECT skipped_runs FROM task WHERE id = :id", id=task["id"]) == 1


async def test_paused_tasks_are_never_scheduled(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, clock: Clock, worker: Any
) -> None:
    url = upstream.route("/items", page_number(make_records(5), size=10))
    task = await _scheduled_task(client, auth, url)
    paused = await client.patch(f"/v1/tasks/{task['id']}", json={"paused": True}, headers=auth)
    assert paused.json()["next_run_at"] is None

    # Even a slot left behind (a row changed by hand) does not start a paused task.
    await clock.due_at(utcnow() - timedelta(seconds=1), task["id"])

    async def cleared() -> bool:
        at = await clock.scalar("SELECT next_run_at FROM task WHERE id = :id", id=task["id"])
        return at is None

    await _until(cleared)
    assert await _runs(client, auth, task["id"]) == []


async def test_a_slot_starts_about_when_it_is_due_not_at_a_coarse_tick(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, clock: Clock, worker: Any
) -> None:
    url = upstream.route("/items", page_number(make_records(5), size=10))
    task = await _scheduled_task(client, auth, url)
    slot = utcnow() + timedelta(seconds=1.5)

    await clock.due_at(slot, task["id"])  # the scheduler sleeps until exactly then

    await _until(lambda: _has_runs(client, auth, task["id"], 1))
    created = datetime.fromisoformat((await _runs(client, auth, task["id"]))[0]["created_at"])
    # Not before its slot; and well before the next safety-net wake-up (60 s), which is
    # all a scheduler that slept on a coarse tick could promise.
    assert slot <= created < slot + timedelta(seconds=5)


async def test_each_slot_starts_once_whatever_the_number_of_workers(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    clock: Clock,
    spawn_worker: SpawnWorker,
) -> None:
    url = upstream.route("/items", page_number(make_records(3), size=10))
    tasks = [await _scheduled_task(client, auth, url, name=f"t{i}") for i in range(30)]
    ids = [task["id"] for task in tasks]
    for _ in range(3):
        spawn_worker()
    await asyncio.sleep(2.0)  # the three schedulers are up and sleeping

    for round_ in range(1, 3):
        await clock.due_at(utcnow() - timedelta(seconds=1), *ids)

        async def all_started(n: int = round_) -> bool:
            count = await clock.scalar(
                "SELECT count(*) FROM run WHERE trigger = 'schedule' AND status = 'succeeded'"
            )
            return bool(count >= n * len(ids))

        await _until(all_started, timeout=30)
        await asyncio.sleep(1.0)  # a duplicate would have started by now
        per_task = {task_id: await _runs(client, auth, task_id) for task_id in ids}
        assert {task_id: len(runs) for task_id, runs in per_task.items()} == dict.fromkeys(
            ids, round_
        )


async def test_an_every_seconds_schedule_keeps_firing_on_its_own(
    settings: Settings, upstream: Upstream, make_key: Any
) -> None:
    quick = settings.model_copy(update={"min_interval_seconds": 1})
    url = upstream.route("/items", page_number(make_records(3), size=10))
    async with api_client(quick) as client, running_worker(quick):
        auth = await make_key("acme")
        body = {**http_task(url, records_path="data"), "schedule": {"every_seconds": 1}}
        task = await create_task(client, auth, body)

        await _until(lambda: _has_runs(client, auth, task["id"], 3), timeout=20)

        runs = await _runs(client, auth, task["id"])
        assert {run["trigger"] for run in runs} == {"schedule"}
        starts = sorted(datetime.fromisoformat(run["created_at"]) for run in runs)
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert all(gap >= timedelta(seconds=0.9) for gap in gaps)  # one run per slot


async def test_a_scheduled_task_stored_without_a_slot_gets_one_when_a_worker_starts(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    clock: Clock,
    settings: Settings,
) -> None:
    url = upstream.route("/items", page_number(make_records(3), size=10))
    task = await _scheduled_task(client, auth, url)
    plain = await create_task(client, auth, http_task(url, name="plain", records_path="data"))
    await clock.due_at(None, task["id"])  # as a task stored before the scheduler was

    async with running_worker(settings):

        async def slotted() -> bool:
            at = await clock.scalar("SELECT next_run_at FROM task WHERE id = :id", id=task["id"])
            return at is not None

        await _until(slotted)

    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert datetime.fromisoformat(shown["next_run_at"]).month == 2
    assert (await client.get(f"/v1/tasks/{plain['id']}", headers=auth)).json()[
        "next_run_at"
    ] is None


async def test_one_batch_skips_exactly_the_tasks_with_an_active_run_and_counts_them(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, clock: Clock, worker: Any
) -> None:
    fast = upstream.route("/items", page_number(make_records(3), size=10))
    slow = upstream.route("/slow", slowly(page_number(make_records(3), size=10), 3.0))
    free = [await _scheduled_task(client, auth, fast, name=f"free{i}") for i in range(5)]
    busy = [await _scheduled_task(client, auth, slow, name=f"busy{i}") for i in range(3)]
    paused = await _scheduled_task(client, auth, fast, name="paused")
    await client.patch(f"/v1/tasks/{paused['id']}", json={"paused": True}, headers=auth)
    for task in busy:
        trigger = await client.post(f"/v1/tasks/{task['id']}/runs", headers=auth)
        await wait_run(client, auth, trigger.json()["id"], until={"running"})

    # One batch claims all nine: five start, three are skipped, the paused one is cleared.
    everyone = [*free, *busy, paused]
    await clock.due_at(utcnow() - timedelta(seconds=1), *(task["id"] for task in everyone))

    async def all_moved() -> bool:
        for task in [*free, *busy]:
            shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
            if datetime.fromisoformat(shown["next_run_at"]) <= utcnow():
                return False
        return True

    await _until(all_moved)
    for task in free:
        runs = await _runs(client, auth, task["id"])
        assert [run["trigger"] for run in runs] == ["schedule"]
    for task in busy:
        assert [run["trigger"] for run in await _runs(client, auth, task["id"])] == ["manual"]
    skipped = {
        task["id"]: await clock.scalar(
            "SELECT skipped_runs FROM task WHERE id = :id", id=task["id"]
        )
        for task in everyone
    }
    assert skipped == {task["id"]: int(task in busy) for task in everyone}
    assert await _runs(client, auth, paused["id"]) == []
    assert (
        await clock.scalar("SELECT next_run_at FROM task WHERE id = :id", id=paused["id"]) is None
    )
