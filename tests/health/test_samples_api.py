"""Health samples end to end: the real app, a real arq worker on Redis, the database."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.fixtures.app import MakeKey, api_client
from tests.health.helpers import changes, daily, ingest, push, steps, wait_batch

pytestmark = pytest.mark.usefixtures("worker")

A = steps("a", 400, "2026-12-03T23:50:00+01:00", "2026-12-04T00:10:00+01:00", tz_offset_minutes=60)
B = steps(
    "b", 100, "2026-12-04T08:00:00Z", "2026-12-04T08:10:00Z", modified_at="2026-12-04T08:10:00Z"
)


async def test_a_batch_answers_at_once_and_the_worker_stores_its_accepted_samples(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    heart = {
        "id": "h",
        "source": "watch",
        "type": "heart_rate",
        "value": 900,
        "unit": "bpm",
        "start": "2026-12-04T08:00:00Z",
    }
    answer = await push(client, auth, [A, heart, B, {"id": 3}, "steps"])
    assert answer["status"] == "pending" and answer["accepted"] == 2
    assert answer["rejected"] == [
        {"index": 1, "reason": "heart_rate 900 count/min is outside 20-300"},
        {"index": 3, "reason": "id: Input should be a valid string"},
        {"index": 4, "reason": "Input should be a valid dictionary or instance of SampleIn"},
    ]

    batch = await wait_batch(client, auth, answer["batch_id"])
    assert batch["status"] == "completed" and batch["completed_at"]
    assert (batch["accepted"], batch["ingested"], batch["inserted"]) == (2, 2, 2)
    assert batch["rejected"] == answer["rejected"]
    listed = await client.get("/v1/health/samples", params={"user_id": "u_42"}, headers=auth)
    items = listed.json()["items"]
    assert [item["id"] for item in items] == ["a", "b"]
    assert items[0]["start"] == "2026-12-03T22:50:00Z" and items[0]["value"] == 400


async def test_resending_is_harmless_and_an_older_update_is_ignored(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await ingest(client, auth, [A, B])
    again = await ingest(client, auth, [A, B])
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 2)

    newer = {**B, "value": 150, "modified_at": "2026-12-04T09:00:00Z"}
    stale = {**B, "value": 120, "modified_at": "2026-12-04T08:30:00Z"}
    assert (await ingest(client, auth, [newer]))["updated"] == 1
    assert (await ingest(client, auth, [stale]))["ignored"] == 1

    feed = await changes(client, auth)
    assert [(item["id"], item["value"], item["seq"]) for item in feed] == [
        ("a", 400, 1),
        ("b", 150, 3),
    ]


async def test_a_batch_of_new_samples_with_one_stored_key_last_writes_each_sample_once(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """A chunk is first inserted whole as new rows; a stored key among them (here the
    last, after every new row went in) must undo that insert and go the looked-up way,
    with nothing written twice and the user's seqs still one per change."""
    await ingest(client, auth, [A])
    fresh = [steps(f"n{n}", n, "2026-12-04T09:00:00Z", "2026-12-04T09:01:00Z") for n in range(5)]
    edited = {**A, "value": 401}
    again = await ingest(client, auth, [*fresh, fresh[0], edited])
    counts = (again["inserted"], again["updated"], again["unchanged"])
    assert counts == (5, 1, 1)  # fresh[0] twice in the batch: the second is unchanged

    feed = await changes(client, auth)
    assert [item["seq"] for item in feed] == list(range(2, 8))
    assert sorted(item["id"] for item in feed) == ["a", "n0", "n1", "n2", "n3", "n4"]
    listed = await client.get("/v1/health/samples", params={"user_id": "u_42"}, headers=auth)
    assert sorted(item["id"] for item in listed.json()["items"]) == sorted(
        ["a", "n0", "n1", "n2", "n3", "n4"]
    )


async def test_a_deletion_is_idempotent_and_reaches_the_change_feed(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await ingest(client, auth, [A, B])
    gone = {"id": "a", "source": "watch", "deleted": True}
    assert (await ingest(client, auth, [gone]))["deleted"] == 1
    assert (await ingest(client, auth, [gone]))["unchanged"] == 1

    feed = await changes(client, auth)
    assert [(item["id"], item["deleted"], item["seq"]) for item in feed] == [
        ("b", False, 2),
        ("a", True, 3),
    ]
    assert feed[1]["type"] == "steps" and feed[1]["value"] is None and feed[1]["start"] is None
    listed = await client.get("/v1/health/samples", params={"user_id": "u_42"}, headers=auth)
    assert [item["id"] for item in listed.json()["items"]] == ["b"]
    days = await daily(client, auth, "steps", "2026-12-03", "2026-12-04")
    assert days["days"] == [{"date": "2026-12-04", "sum": 100, "sources": {"watch": 100}}]

    after = feed[-1]["seq"]
    assert await changes(client, auth, after=after) == []


async def test_the_change_feed_is_per_user_and_strictly_increasing(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    batches = [
        [steps(f"{user}-{n}", n, "2026-12-04T08:00:00Z", "2026-12-04T08:01:00Z") for n in range(5)]
        for user in ("u_1", "u_2", "u_1")
    ]
    answers = [
        await push(client, auth, batch, user)
        for batch, user in zip(batches, ["u_1", "u_2", "u_1"], strict=True)
    ]
    for answer in answers:
        await wait_batch(client, auth, answer["batch_id"])

    first = await changes(client, auth, "u_1")
    assert [item["seq"] for item in first] == list(range(1, 6))  # the third batch re-sent them
    assert [item["seq"] for item in await changes(client, auth, "u_2")] == list(range(1, 6))


async def test_samples_list_filters_and_pages(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    samples = [
        steps(f"s{n}", n, f"2026-12-04T0{n}:00:00Z", f"2026-12-04T0{n}:05:00Z") for n in range(1, 8)
    ]
    heart = {
        "id": "h",
        "source": "ring",
        "type": "heart_rate",
        "value": 61,
        "unit": "bpm",
        "start": "2026-12-04T03:00:00Z",
    }
    await ingest(client, auth, [*samples, heart])

    seen: list[str] = []
    params: dict[str, Any] = {
        "user_id": "u_42",
        "type": "steps",
        "limit": 3,
        "start": "2026-12-04T02:00:00Z",
        "end": "2026-12-04T07:00:00Z",
    }
    while True:
        page = (await client.get("/v1/health/samples", params=params, headers=auth)).json()
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ["s2", "s3", "s4", "s5", "s6"]

    bad = await client.get(
        "/v1/health/samples", params={"user_id": "u_42", "cursor": "!!"}, headers=auth
    )
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    unknown = await client.get(
        "/v1/health/samples", params={"user_id": "u_42", "type": "x"}, headers=auth
    )
    assert unknown.status_code == 422


async def test_source_priority_decides_what_the_daily_summary_counts(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    watch = steps("w", 6000, "2026-12-04T10:00:00Z", "2026-12-04T11:00:00Z", source="watch")
    phone = steps("p", 3000, "2026-12-04T10:30:00Z", "2026-12-04T11:30:00Z", source="phone")
    await ingest(client, auth, [watch, phone])

    default = await daily(client, auth, "steps", "2026-12-04", "2026-12-04")
    assert default["days"] == [
        {"date": "2026-12-04", "sum": 7500, "sources": {"phone": 1500, "watch": 6000}}
    ]

    put = await client.put(
        "/v1/health/users/u_42/sources", json={"sources": ["phone", "watch"]}, headers=auth
    )
    assert put.status_code == 200 and put.json() == {
        "user_id": "u_42",
        "sources": ["phone", "watch"],
    }
    got = await client.get("/v1/health/users/u_42/sources", headers=auth)
    assert got.json()["sources"] == ["phone", "watch"]
    ranked = await daily(client, auth, "steps", "2026-12-04", "2026-12-04")
    assert ranked["days"][0]["sources"] == {"phone": 3000, "watch": 3000}

    twice = await client.put(
        "/v1/health/users/u_42/sources", json={"sources": ["a", "a"]}, headers=auth
    )
    assert twice.status_code == 422


async def test_daily_summaries_per_kind(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    beats = [
        {
            "id": f"hr{n}",
            "source": "watch",
            "type": "heart_rate",
            "value": v,
            "unit": "bpm",
            "start": "2026-12-04T09:00:00+01:00",
            "timezone": "Europe/Berlin",
        }
        for n, v in enumerate([60, 75, 90])
    ]
    sleep = {
        "id": "z",
        "source": "watch",
        "type": "sleep",
        "start": "2026-12-03T23:00:00+01:00",
        "end": "2026-12-04T07:00:00+01:00",
        "metadata": {"stage": "light"},
    }
    await ingest(client, auth, [*beats, sleep])

    heart = await daily(client, auth, "heart_rate", "2026-12-01", "2026-12-07")
    assert heart["unit"] == "count/min" and heart["kind"] == "discrete"
    assert heart["days"] == [
        {"date": "2026-12-04", "min": 60, "avg": 75, "max": 90, "count": 3, "sources": {"watch": 3}}
    ]
    night = await daily(client, auth, "sleep", "2026-12-01", "2026-12-07")
    assert night["days"] == [
        {"date": "2026-12-04", "stages": {"light": 28800}, "sources": {"watch": 28800}}
    ]

    for params in (
        {"type": "nope", "start": "2026-12-01", "end": "2026-12-02"},
        {"type": "steps", "start": "2026-12-02", "end": "2026-12-01"},
        {"type": "steps", "start": "2025-01-01", "end": "2026-12-01"},
        {"type": "steps", "start": "yesterday", "end": "2026-12-01"},
    ):
        response = await client.get(
            "/v1/health/daily", params={"user_id": "u_42", **params}, headers=auth
        )
        assert response.status_code == 422, params
        assert response.headers["content-type"] == "application/problem+json"


async def test_a_completed_batch_writes_its_event(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    batch = await ingest(client, auth, [A, B, {"id": "x"}])
    events = (
        await client.get("/v1/events", params={"type": "health.batch.completed"}, headers=auth)
    ).json()
    [event] = events["items"]
    assert event["data"] == {
        "batch_id": batch["id"],
        "user_id": "u_42",
        "accepted": 2,
        "rejected": 1,
        "inserted": 2,
        "updated": 0,
        "deleted": 0,
        "unchanged": 0,
        "ignored": 0,
        "next_after": 2,
    }
    mine = await client.get("/v1/events", params={"user_id": "u_42"}, headers=auth)
    assert [item["id"] for item in mine.json()["items"]] == [event["id"]]


async def test_another_tenants_batch_is_404_and_its_samples_invisible(
    client: httpx.AsyncClient, auth: dict[str, str], make_key: MakeKey
) -> None:
    other = await make_key("globex")
    batch = await ingest(client, auth, [A])
    response = await client.get(f"/v1/health/batches/{batch['id']}", headers=other)
    assert (
        response.status_code == 404
        and response.headers["content-type"] == "application/problem+json"
    )
    missing = await client.get("/v1/health/batches/hbt_nope", headers=other)
    assert missing.json()["title"] == response.json()["title"]
    for path in ("/v1/health/samples", "/v1/health/changes"):
        theirs = await client.get(path, params={"user_id": "u_42"}, headers=other)
        assert theirs.json()["items"] == []
    days = await daily(client, other, "steps", "2026-12-01", "2026-12-07")
    assert days["days"] == []
    assert (await client.get("/v1/health/users/u_42/sources", headers=other)).json()[
        "sources"
    ] == []


async def test_batch_limits(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    many = [{"id": str(n)} for n in range(10_001)]
    response = await client.post(
        "/v1/health/samples", json={"user_id": "u_42", "samples": many}, headers=auth
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "samples"]

    small = settings.model_copy(update={"max_body_bytes": 2000})
    async with api_client(small) as tight:
        big = {"user_id": "u_42", "samples": [A] * 20}
        too_big = await tight.post("/v1/health/samples", json=big, headers=auth)
        assert too_big.status_code == 413
        assert too_big.headers["content-type"] == "application/problem+json"

    invalid: list[dict[str, Any]] = [
        {"samples": []},
        {"user_id": "u_42", "samples": {}},
        {"user_id": "", "samples": []},
    ]
    for body in invalid:
        response = await client.post("/v1/health/samples", json=body, headers=auth)
        assert response.status_code == 422, body
    assert (
        await client.post("/v1/health/samples", json={"user_id": "u", "samples": []})
    ).status_code == 401


async def test_an_idempotency_key_replays_the_first_answer(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    keyed = {**auth, "Idempotency-Key": "batch-1"}
    body = {"user_id": "u_42", "samples": [A]}
    first = await client.post("/v1/health/samples", json=body, headers=keyed)
    second = await client.post("/v1/health/samples", json=body, headers=keyed)
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json() and second.headers["idempotent-replayed"] == "true"


async def test_the_types_table_is_listed(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    types = {
        t["name"]: t for t in (await client.get("/v1/health/types", headers=auth)).json()["items"]
    }
    assert types["blood_glucose"]["units"] == ["mg/dL", "mmol/L"]
    assert types["sleep"]["categories"] == ["awake", "deep", "in_bed", "light", "rem"]
    assert types["steps"]["max_duration_seconds"] == 90000


async def test_the_readme_example_gives_what_the_readme_says(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    berlin = {"timezone": "Europe/Berlin"}
    samples = [
        steps(
            "w-1",
            400,
            "2026-12-03T23:50:00+01:00",
            "2026-12-04T00:10:00+01:00",
            "apple_watch",
            **berlin,
        ),
        steps(
            "p-1",
            300,
            "2026-12-04T00:00:00+01:00",
            "2026-12-04T00:20:00+01:00",
            "iphone",
            tz_offset_minutes=60,
        ),
        {
            "id": "w-2",
            "source": "apple_watch",
            "type": "active_energy",
            "value": 418.4,
            "unit": "kJ",
            "start": "2026-12-04T08:00:00+01:00",
            "end": "2026-12-04T09:00:00+01:00",
            **berlin,
        },
        {
            "id": "w-3",
            "source": "apple_watch",
            "type": "heart_rate",
            "value": 900,
            "unit": "bpm",
            "start": "2026-12-04T08:00:00+01:00",
        },
    ]
    answer = await push(client, auth, samples)
    assert answer["rejected"] == [
        {"index": 3, "reason": "heart_rate 900 count/min is outside 20-300"}
    ]
    await wait_batch(client, auth, answer["batch_id"])

    default = await daily(client, auth, "steps", "2026-12-03", "2026-12-04")
    assert [(day["date"], day["sum"]) for day in default["days"]] == [
        ("2026-12-03", 200),
        ("2026-12-04", 300),
    ]
    await client.put(
        "/v1/health/users/u_42/sources", json={"sources": ["apple_watch", "iphone"]}, headers=auth
    )
    ranked = await daily(client, auth, "steps", "2026-12-03", "2026-12-04")
    assert [(day["date"], day["sum"]) for day in ranked["days"]] == [
        ("2026-12-03", 200),
        ("2026-12-04", 350),
    ]
    energy = await client.get(
        "/v1/health/samples", params={"user_id": "u_42", "type": "active_energy"}, headers=auth
    )
    assert [(item["value"], item["unit"]) for item in energy.json()["items"]] == [(100, "kcal")]


async def test_the_daily_rollup_follows_late_moved_and_deleted_samples(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """Each summary below is read after the one before it was kept in the rollup: a
    late sample, one moved to another day, one from a far zone and a deletion each
    change the days they touch, and only those."""

    async def week() -> list[tuple[str, float]]:
        body = await daily(client, auth, "steps", "2026-11-28", "2026-12-04")
        return [(day["date"], day["sum"]) for day in body["days"]]

    await ingest(client, auth, [steps("d1", 100, "2026-12-01T10:00:00Z", "2026-12-01T10:10:00Z")])
    assert await week() == [("2026-12-01", 100)]
    assert await week() == [("2026-12-01", 100)]  # from the rollup

    late = steps("d2", 50, "2026-12-01T12:00:00Z", "2026-12-01T12:10:00Z")
    await ingest(client, auth, [late])
    assert await week() == [("2026-12-01", 150)]

    moved = steps("d2", 50, "2026-11-29T12:00:00Z", "2026-11-29T12:10:00Z")
    await ingest(client, auth, [moved])
    assert await week() == [("2026-11-29", 50), ("2026-12-01", 100)]

    # 23:30 UTC on the 2nd is the 3rd at 13:30 in Kiribati (+14:00)
    far = steps(
        "d3", 30, "2026-12-02T23:30:00Z", "2026-12-02T23:40:00Z", timezone="Pacific/Kiritimati"
    )
    await ingest(client, auth, [far])
    assert await week() == [("2026-11-29", 50), ("2026-12-01", 100), ("2026-12-03", 30)]

    await ingest(client, auth, [{"id": "d1", "source": "watch", "deleted": True}])
    assert await week() == [("2026-11-29", 50), ("2026-12-03", 30)]
