"""Wearable APIs through tasks: a task's `health_mapping` turns each synced record into
health samples, in the page's commit. The real app, a real arq worker on Redis, the
database, and a real upstream on loopback serving wearable payloads."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from service.config import Settings
from service.db import create_engine, create_sessionmaker
from service.health import wearable
from service.models import Task
from tests.fixtures.upstream import (
    DAILY_ACTIVITY_MAPPING,
    HEART_RATE_MAPPING,
    Upstream,
    cursor,
    daily_activity,
    heart_rate_day,
)
from tests.health.helpers import changes, daily
from tests.helpers import create_task, feed, http_task, sync, wait_run

pytestmark = pytest.mark.usefixtures("worker")

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}


def wearable_task(url: str, mapping: dict[str, Any], name: str = "ring") -> dict[str, Any]:
    task = http_task(url, name=name, records_path="data", pagination=CURSOR)
    return task | {"user_id": "u_42", "health_mapping": mapping}


async def samples(
    client: httpx.AsyncClient, auth: dict[str, str], type_: str
) -> list[dict[str, Any]]:
    response = await client.get(
        "/v1/health/samples",
        params={"user_id": "u_42", "type": type_, "limit": 1000},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_daily_activity_records_become_samples_in_canonical_units(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    records = daily_activity(4, zones=("America/New_York", "Europe/Berlin"))
    url = upstream.route("/v2/daily_activity", cursor(records, size=3))
    task = await create_task(client, auth, wearable_task(url, DAILY_ACTIVITY_MAPPING))

    run = await sync(client, auth, task["id"])

    assert run["status"] == "succeeded", run
    assert run["stats"]["inserted"] == 4
    assert (run["stats"]["samples_written"], run["stats"]["samples_rejected"]) == (12, 0)
    distance = await samples(client, auth, "distance")
    assert [(s["id"], s["unit"], s["source"]) for s in distance][:1] == [
        ("da_2026-11-01:distance", "m", "ring")
    ]
    assert [s["value"] for s in distance] == [4023.36, 4828.032, 5632.704, 6437.376]  # miles
    # Each day starts at its own local midnight: New York, then Berlin.
    assert [s["start"] for s in distance[:2]] == ["2026-11-01T04:00:00Z", "2026-11-01T23:00:00Z"]
    assert distance[0]["timezone"] == "America/New_York"
    # New York's 1 November 2026 has 25 hours (DST ends): the day's sample lasts all of them.
    assert distance[0]["end"] == "2026-11-02T05:00:00Z"
    energy = await daily(client, auth, "active_energy", "2026-11-01", "2026-11-04")
    assert energy["unit"] == "kcal"
    assert [(row["date"], row["sum"]) for row in energy["days"] if row["sum"]] == [
        ("2026-11-01", 300.0),  # 1255.2 kJ
        ("2026-11-02", 400.0),
        ("2026-11-03", 500.0),
        ("2026-11-04", 600.0),
    ]
    steps = await daily(client, auth, "steps", "2026-11-01", "2026-11-04")
    assert [row["sum"] for row in steps["days"]] == [6000, 7000, 8000, 9000]


async def test_a_resync_of_an_unchanged_upstream_writes_no_samples(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    url = upstream.route("/v2/daily_activity", cursor(daily_activity(5), size=2))
    task = await create_task(client, auth, wearable_task(url, DAILY_ACTIVITY_MAPPING))
    await sync(client, auth, task["id"])
    before = await changes(client, auth)

    again = await sync(client, auth, task["id"])

    assert again["status"] == "succeeded", again
    assert again["stats"]["unchanged"] == 5
    assert again["stats"]["samples_written"] == 0
    assert await changes(client, auth) == before
    assert len(before) == 15


async def test_a_changed_record_updates_its_samples_and_a_grown_series_adds_its_points(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    days = [heart_rate_day("2026-11-03", 30), heart_rate_day("2026-11-04", 10)]
    url = upstream.route("/v2/heartrate", cursor(days, size=1))
    task = await create_task(client, auth, wearable_task(url, HEART_RATE_MAPPING, "hr"))
    first = await sync(client, auth, task["id"])
    assert first["stats"]["samples_written"] == 40
    seen = await changes(client, auth)
    after = seen[-1]["seq"]

    # The day goes on: today's series grows by 5 points and one earlier point is revised.
    grown = heart_rate_day("2026-11-04", 15)
    grown["heart_rate"]["items"][2]["bpm"] = 99
    days[1] = grown
    second = await sync(client, auth, task["id"])

    assert second["status"] == "succeeded", second
    assert (second["stats"]["updated"], second["stats"]["unchanged"]) == (1, 1)
    assert second["stats"]["samples_written"] == 6
    new = await changes(client, auth, after=after)
    assert sorted(item["id"].rsplit(":", 1)[0][-6:] for item in new) == sorted(
        ["T07:02", "T07:10", "T07:11", "T07:12", "T07:13", "T07:14"]
    )
    revised = next(item for item in new if "T07:02" in item["id"])
    assert (revised["value"], revised["unit"]) == (99, "count/min")
    assert revised["id"] == "hr_2026-11-04:heart_rate:2026-11-04T07:02:00Z"
    heart = await daily(client, auth, "heart_rate", "2026-11-03", "2026-11-04")
    assert [(row["date"], row["count"], row["max"]) for row in heart["days"]] == [
        ("2026-11-03", 30, 89),
        ("2026-11-04", 15, 99),
    ]


async def test_a_record_whose_sample_is_impossible_is_stored_and_the_rejection_counted(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    records = daily_activity(2)
    records[1]["steps"] = -40
    del records[1]["distance_mi"]
    url = upstream.route("/v2/daily_activity", cursor(records, size=5))
    task = await create_task(client, auth, wearable_task(url, DAILY_ACTIVITY_MAPPING))

    run = await sync(client, auth, task["id"])

    assert run["status"] == "succeeded", run
    assert (run["stats"]["inserted"], run["stats"]["rejected"]) == (2, 0)
    assert (run["stats"]["samples_written"], run["stats"]["samples_rejected"]) == (4, 2)
    assert [item["data"] for item in await feed(client, auth, task["id"])] == records
    assert [s["id"] for s in await samples(client, auth, "steps")] == ["da_2026-11-01:steps"]
    assert len(await samples(client, auth, "active_energy")) == 2


def _mapping(**change: Any) -> dict[str, Any]:
    mapping = copy.deepcopy(DAILY_ACTIVITY_MAPPING)
    for key, value in change.items():
        if key.startswith("entry1_"):
            mapping["samples"][1][key.removeprefix("entry1_")] = value
        elif value is None:
            mapping.pop(key)
        else:
            mapping[key] = value
    return mapping


@pytest.mark.parametrize(
    ("mapping", "where", "says"),
    [
        (_mapping(entry1_type="calories"), ["samples", 1, "type"], "unknown type 'calories'"),
        (_mapping(entry1_unit="kg"), ["samples", 1, "unit"], "cannot be converted to kcal"),
        (_mapping(id_path=None), ["samples", 0, "id_path"], "id_path is required"),
        (_mapping(entry1_value_path=""), ["samples", 1, "value_path"], "at least 1 character"),
        (_mapping(end_path="end"), ["duration_seconds"], "not both"),
        (_mapping(timezone="Mars/Olympus", timezone_path=None), ["timezone"], "unknown timezone"),
        (_mapping(entry1_type="steps"), ["samples", 1, "type"], "mapped twice"),
        (_mapping(entry1_type="hrv_rmssd"), ["samples", 1, "type"], "cannot be converted"),
        (_mapping(surprise=1), ["surprise"], "Extra inputs"),
        (
            {"type": "sleep", "start_path": "a", "id_path": "i"},
            ["stage_path"],
            "sleep needs stage_path",
        ),
    ],
)
async def test_an_unusable_mapping_is_refused_at_registration_naming_the_field(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    mapping: dict[str, Any],
    where: list[str | int],
    says: str,
) -> None:
    body = wearable_task("https://wearable.example.com/v2", mapping)
    response = await client.post("/v1/tasks", json=body, headers=auth)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert errors[0]["loc"] == ["body", "health_mapping", *where], errors
    assert says in errors[0]["msg"], errors


async def test_a_mapping_needs_the_tasks_user(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = wearable_task("https://wearable.example.com/v2", DAILY_ACTIVITY_MAPPING)
    del body["user_id"]
    response = await client.post("/v1/tasks", json=body, headers=auth)

    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "user_id"]


async def test_a_mapping_added_later_applies_to_stored_records_with_a_full_refresh(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    url = upstream.route("/v2/daily_activity", cursor(daily_activity(3), size=2))
    body = wearable_task(url, DAILY_ACTIVITY_MAPPING)
    del body["health_mapping"]
    task = await create_task(client, auth, body)
    assert (await sync(client, auth, task["id"]))["stats"]["inserted"] == 3

    wrong = {"health_mapping": {**DAILY_ACTIVITY_MAPPING, "duration_seconds": -1}}
    response = await client.patch(f"/v1/tasks/{task['id']}", json=wrong, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "health_mapping", "duration_seconds"]
    patched = {"health_mapping": DAILY_ACTIVITY_MAPPING}
    response = await client.patch(f"/v1/tasks/{task['id']}", json=patched, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["health_mapping"] == DAILY_ACTIVITY_MAPPING
    plain = await sync(client, auth, task["id"])
    assert (plain["stats"]["unchanged"], plain["stats"]["samples_written"]) == (3, 0)

    response = await client.post(
        f"/v1/tasks/{task['id']}/runs", json={"full_refresh": True}, headers=auth
    )
    refreshed = await wait_run(client, auth, response.json()["id"])

    assert refreshed["status"] == "succeeded", refreshed
    assert (refreshed["stats"]["unchanged"], refreshed["stats"]["samples_written"]) == (3, 9)
    assert len(await samples(client, auth, "steps")) == 3
    again = await client.post(
        f"/v1/tasks/{task['id']}/runs", json={"full_refresh": True}, headers=auth
    )
    assert (await wait_run(client, auth, again.json()["id"]))["stats"]["samples_written"] == 0


async def test_a_stored_mapping_a_run_cannot_apply_fails_the_run_saying_why(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    """A task stored before mappings were checked (any JSON was kept) is not synced
    without its samples: its run fails at once, naming the field to fix."""
    url = upstream.route("/v2/daily_activity", cursor(daily_activity(2), size=5))
    task = await create_task(client, auth, wearable_task(url, DAILY_ACTIVITY_MAPPING))
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            await session.execute(
                update(Task).where(col(Task.id) == task["id"]).values(health_mapping={"h": 1})
            )
            await session.commit()
    finally:
        await engine.dispose()

    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "bad_config"
    assert run["error"]["message"].startswith("the task's health_mapping.h: Extra inputs")
    assert upstream.hits("/v2/daily_activity") == []
    assert await feed(client, auth, task["id"]) == []


async def test_a_page_with_more_samples_than_a_chunk_is_stored_chunk_by_chunk(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page of intraday series can hold more samples than one statement may carry
    parameters: they are looked up and upserted `CHUNK` at a time, in the page's
    transaction (made small here; the worker runs in this process)."""
    monkeypatch.setattr(wearable, "CHUNK", 70)
    days = [heart_rate_day(f"2026-10-{d:02d}", 25) for d in range(1, 31)]  # 750 points
    url = upstream.route("/v2/heartrate", cursor(days, size=30))
    task = await create_task(client, auth, wearable_task(url, HEART_RATE_MAPPING, "hr"))

    run = await sync(client, auth, task["id"])

    assert run["status"] == "succeeded", run
    assert (run["stats"]["pages"], run["stats"]["samples_written"]) == (1, 750)
    heart = await daily(client, auth, "heart_rate", "2026-10-01", "2026-10-31")
    assert [row["count"] for row in heart["days"]] == [25] * 30
    assert (await sync(client, auth, task["id"]))["stats"]["samples_written"] == 0
