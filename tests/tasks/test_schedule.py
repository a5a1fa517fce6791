"""Schedules through the API: validation (cron, jitter, the minimum interval on every path)
and the task's `next_run_at` (set, kept, recomputed, cleared while paused)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import update

from service.config import Settings
from service.db import create_engine
from service.models import Task
from service.tasks.schedule import next_run_at
from tests.fixtures.app import api_client
from tests.helpers import create_task, http_task
from tests.tasks.conftest import TaskRow

URL = "https://api.example.com/items"
DAILY = {"cron": "0 6 * * *", "timezone": "Europe/Berlin"}
HOURLY = {"every_seconds": 3600, "jitter_seconds": 60}

SetNextRun = Callable[[str, datetime | None], Awaitable[None]]


@pytest.fixture
def set_next_run(settings: Settings) -> SetNextRun:
    """Write `next_run_at` as the worker's scheduler does (the API never sets it directly)."""

    async def write(task_id: str, value: datetime | None) -> None:
        engine = create_engine(settings.database_url)
        try:
            async with engine.begin() as connection:
                table = Task.__table__  # type: ignore[attr-defined]
                await connection.execute(
                    update(table).where(table.c.id == task_id).values(next_run_at=value)
                )
        finally:
            await engine.dispose()

    return write


def scheduled(schedule: dict[str, Any], name: str = "t1") -> dict[str, Any]:
    return {**http_task(URL, name=name), "schedule": schedule}


def when(task: dict[str, Any]) -> datetime | None:
    value = task["next_run_at"]
    return None if value is None else datetime.fromisoformat(value)


def slot(task: dict[str, Any]) -> datetime:
    """The task's next_run_at, which must be set."""
    at = when(task)
    assert at is not None, task
    return at


async def patch(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str, body: Any
) -> dict[str, Any]:
    response = await client.patch(f"/v1/tasks/{task_id}", json=body, headers=auth)
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


async def post(
    client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any], on_conflict: str
) -> httpx.Response:
    return await client.post(
        "/v1/tasks", json=body, params={"on_conflict": on_conflict}, headers=auth
    )


async def posted(
    client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any], on_conflict: str
) -> dict[str, Any]:
    response = await post(client, auth, body, on_conflict)
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


def refused_at(response: httpx.Response) -> list[tuple[list[str | int], str]]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [(error["loc"], error["msg"]) for error in response.json()["errors"]]


class Window:
    """The slots a request made between `start` and `end` may have computed."""

    def __init__(self) -> None:
        self.start = datetime.now(UTC)

    def slots(self, schedule: dict[str, Any], task_id: str) -> set[datetime | None]:
        end = datetime.now(UTC)
        return {next_run_at(schedule, task_id, self.start), next_run_at(schedule, task_id, end)}


# ---- validation ------------------------------------------------------------------------

BAD_CRONS = [
    ("61 * * * *", "Bad minute"),
    ("a b c d e", "Bad minute"),
    ("*/0 * * * *", "Bad minute"),
    ("0 24 * * *", "Bad hour"),
    ("0 6 31 2 *", "Bad day-of-month"),
    ("0 6 * *", "5 fields"),
    ("0 0 6 * * *", "5 fields"),  # cronsim would read a seconds field
]


async def test_bad_cron_expressions_are_refused_at_the_cron_field(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for expression, reason in BAD_CRONS:
        response = await client.post(
            "/v1/tasks", json=scheduled({"cron": expression}), headers=auth
        )
        [(loc, msg)] = refused_at(response)
        assert loc == ["body", "schedule", "cron"], expression
        assert reason in msg, (expression, msg)
    listed = await client.get("/v1/tasks", headers=auth)
    assert listed.json()["items"] == []


async def test_a_patch_to_a_bad_cron_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, scheduled(DAILY))
    for expression, reason in BAD_CRONS:
        response = await client.patch(
            f"/v1/tasks/{task['id']}", json={"schedule": {"cron": expression}}, headers=auth
        )
        [(loc, msg)] = refused_at(response)
        assert loc == ["body", "schedule", "cron"], expression
        assert reason in msg, (expression, msg)
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json() == task


async def test_cron_is_stored_with_single_spaces_and_any_case(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, scheduled({"cron": " 0  9 * *\tmon-fri "}))
    assert task["schedule"]["cron"] == "0 9 * * mon-fri"
    assert slot(task).strftime("%a %H:%M") in {
        "Mon 09:00",
        "Tue 09:00",
        "Wed 09:00",
        "Thu 09:00",
        "Fri 09:00",
    }


async def test_jitter_is_only_for_every_seconds_and_less_than_it(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for schedule in (
        {**DAILY, "jitter_seconds": 30},
        {"every_seconds": 600, "jitter_seconds": 600},
        {"every_seconds": 600, "jitter_seconds": 601},
    ):
        response = await client.post("/v1/tasks", json=scheduled(schedule), headers=auth)
        [(loc, _)] = refused_at(response)
        assert loc == ["body", "schedule", "jitter_seconds"], schedule

    task = await create_task(client, auth, scheduled({"every_seconds": 600, "jitter_seconds": 599}))
    assert task["schedule"]["jitter_seconds"] == 599


async def test_every_seconds_below_the_minimum_is_refused_on_every_path(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, scheduled({"every_seconds": 3600}))
    below = {"schedule": {"every_seconds": 59}}
    at = [["body", "schedule", "every_seconds"]]

    responses = {
        "create": await client.post(
            "/v1/tasks", json=scheduled({"every_seconds": 59}, "t2"), headers=auth
        ),
        "replace": await post(client, auth, scheduled({"every_seconds": 59}), "replace"),
        "update": await post(client, auth, {**http_task(URL), **below}, "update"),
        "patch": await client.patch(f"/v1/tasks/{task['id']}", json=below, headers=auth),
    }

    for path, response in responses.items():
        assert [loc for loc, _ in refused_at(response)] == at, path
        assert "at least 60" in response.json()["errors"][0]["msg"], path
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json() == task


async def test_a_raised_minimum_refuses_an_update_that_keeps_a_shorter_interval(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    """The merged task is checked, not only what the request names."""
    await create_task(client, auth, scheduled({"every_seconds": 120}))
    stricter = settings.model_copy(update={"min_interval_seconds": 600})

    async with api_client(stricter) as strict:
        response = await post(strict, auth, {**http_task(URL), "tags": ["x"]}, "update")

    assert [loc for loc, _ in refused_at(response)] == [["body", "schedule", "every_seconds"]]
    assert "at least 600" in response.json()["errors"][0]["msg"]


# ---- next_run_at -----------------------------------------------------------------------


async def test_next_run_at_is_shown_in_the_future_on_the_schedule(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    window = Window()
    every = await create_task(client, auth, scheduled(HOURLY, "every"))
    cron = await create_task(client, auth, scheduled(DAILY, "cron"))
    none = await create_task(client, auth, http_task(URL, name="none"))

    assert when(every) in window.slots(HOURLY, every["id"])
    assert window.start < slot(every) <= window.start + timedelta(seconds=3600 + 60)
    at = slot(cron)
    assert window.start < at <= window.start + timedelta(days=1)
    assert at.astimezone(ZoneInfo("Europe/Berlin")).strftime("%H:%M") == "06:00"
    assert when(none) is None
    for task in (every, cron, none):
        shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
        assert shown["next_run_at"] == task["next_run_at"]
    listed = (await client.get("/v1/tasks", headers=auth)).json()["items"]
    assert {t["id"]: t["next_run_at"] for t in listed} == {
        t["id"]: t["next_run_at"] for t in (every, cron, none)
    }


async def test_patching_the_schedule_recomputes_next_run_at(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, scheduled({"cron": "0 6 * * *"}))
    assert slot(task).strftime("%H:%M") == "06:00"

    evening = await patch(client, auth, task["id"], {"schedule": {"cron": "30 18 * * *"}})
    assert slot(evening).strftime("%H:%M") == "18:30"

    tokyo = await patch(client, auth, task["id"], {"schedule": {"timezone": "Asia/Tokyo"}})
    assert slot(tokyo).strftime("%H:%M") == "09:30"  # 18:30 JST

    window = Window()
    hourly = await patch(
        client, auth, task["id"], {"schedule": {"cron": None, "timezone": None, **HOURLY}}
    )
    assert hourly["schedule"] == {**HOURLY, "timezone": "UTC"}
    assert when(hourly) in window.slots(HOURLY, task["id"])

    switch = {"every_seconds": None, "jitter_seconds": None, "cron": "0 9 * * 1-5"}
    weekdays = await patch(
        client, auth, task["id"], {"schedule": {**switch, "timezone": "Europe/Berlin"}}
    )
    assert weekdays["schedule"] == {
        "cron": "0 9 * * 1-5",
        "jitter_seconds": 0,
        "timezone": "Europe/Berlin",
    }
    assert slot(weekdays).astimezone(ZoneInfo("Europe/Berlin")).strftime("%H:%M") == "09:00"

    removed = await patch(client, auth, task["id"], {"schedule": None})
    assert removed["schedule"] is None
    assert when(removed) is None


async def test_a_change_that_leaves_the_schedule_keeps_next_run_at(
    client: httpx.AsyncClient, auth: dict[str, str], set_next_run: SetNextRun
) -> None:
    """A due (here overdue) slot is the scheduler's to fire: an unrelated change must not
    move it to the next one."""
    task = await create_task(client, auth, scheduled(HOURLY))
    overdue = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    await set_next_run(task["id"], overdue)

    changes = [
        await patch(client, auth, task["id"], {"tags": ["wearable"]}),
        await patch(client, auth, task["id"], {"source": {"params": {"start": "2026-02-01"}}}),
        await patch(client, auth, task["id"], {"schedule": HOURLY, "paused": False}),
        await posted(client, auth, {**http_task(URL), "tags": ["x"]}, "update"),
        await posted(client, auth, scheduled(HOURLY), "replace"),
    ]

    assert [when(changed) for changed in changes] == [overdue] * len(changes)
    assert changes[0]["tags"] == ["wearable"]
    assert changes[-1]["tags"] == []


async def test_replacing_with_another_schedule_recomputes_next_run_at(
    client: httpx.AsyncClient, auth: dict[str, str], set_next_run: SetNextRun
) -> None:
    task = await create_task(client, auth, scheduled(HOURLY))
    await set_next_run(task["id"], datetime.now(UTC) - timedelta(minutes=5))

    window = Window()
    replaced = await posted(client, auth, scheduled({"every_seconds": 7200}), "replace")

    assert when(replaced) in window.slots({"every_seconds": 7200}, task["id"])


async def test_pausing_clears_next_run_at_and_unpausing_restores_it(
    client: httpx.AsyncClient, auth: dict[str, str], set_next_run: SetNextRun, task_row: TaskRow
) -> None:
    task = await create_task(client, auth, scheduled(HOURLY))
    assert slot(task) > datetime.now(UTC) - timedelta(seconds=5)

    paused = await patch(client, auth, task["id"], {"paused": True})
    assert (paused["state"], paused["paused"], paused["next_run_at"]) == ("paused", True, None)
    assert (await task_row(task["id"]))["next_run_at"] is None  # what the scheduler reads
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert (shown["state"], shown["next_run_at"]) == ("paused", None)
    rescheduled = await patch(client, auth, task["id"], {"schedule": {"every_seconds": 7200}})
    assert (rescheduled["state"], rescheduled["next_run_at"]) == ("paused", None)

    # Even if a slot was left on the paused task (say, by a pause the worker made), it is
    # not shown, and resuming computes a fresh one rather than firing the stale one.
    await set_next_run(task["id"], datetime.now(UTC) - timedelta(hours=3))
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert (shown["state"], shown["next_run_at"]) == ("paused", None)

    window = Window()
    resumed = await patch(client, auth, task["id"], {"paused": False})
    assert resumed["state"] == "active"
    assert when(resumed) in window.slots({**HOURLY, "every_seconds": 7200}, task["id"])
    assert slot(resumed) > window.start


async def test_a_task_created_paused_has_no_next_run_at(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, {**scheduled(DAILY), "paused": True})
    assert (task["state"], task["next_run_at"]) == ("paused", None)


async def test_a_scheduled_task_without_next_run_at_gets_one_when_it_changes(
    client: httpx.AsyncClient, auth: dict[str, str], set_next_run: SetNextRun
) -> None:
    """A task stored before next_run_at was computed is not left unscheduled."""
    task = await create_task(client, auth, scheduled(HOURLY))
    await set_next_run(task["id"], None)

    window = Window()
    changed = await patch(client, auth, task["id"], {"tags": ["a"]})

    assert slot(changed) in window.slots(HOURLY, task["id"])
