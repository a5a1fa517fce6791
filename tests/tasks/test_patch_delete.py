"""PATCH (JSON merge patch) and DELETE /v1/tasks/{id}."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text

from service.config import Settings
from service.crypto import SecretBox
from service.db import create_engine
from tests.fixtures.upstream import Upstream, cursor, make_records
from tests.helpers import create_task, feed, http_task, sync
from tests.tasks.conftest import TaskRow

URL = "https://api.example.com/items"
TOKEN = "real-upstream-token-wxyz"


def task_with_secret(name: str = "t1") -> dict[str, Any]:
    return http_task(
        URL,
        name=name,
        params={"start_date": "2026-01-01", "units": "metric"},
        headers={"Accept": "application/json"},
        auth={"type": "bearer", "token": TOKEN},
    )


async def stored_auth(settings: Settings, task_row: TaskRow, task_id: str) -> Any:
    return SecretBox(settings.secret_keys).decrypt_json(
        (await task_row(task_id))["auth_ciphertext"]
    )


async def patch(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str, body: Any
) -> httpx.Response:
    return await client.patch(f"/v1/tasks/{task_id}", json=body, headers=auth)


async def test_pausing_and_resuming(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task = await create_task(client, auth, task_with_secret())

    paused = await patch(client, auth, task["id"], {"paused": True})
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    assert paused.json()["paused"] is True
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()["state"] == "paused"

    resumed = await patch(client, auth, task["id"], {"paused": False})
    assert resumed.json()["state"] == "active"
    unchanged = {k: v for k, v in task.items() if k not in ("updated_at",)}
    assert {k: v for k, v in resumed.json().items() if k != "updated_at"} == unchanged


async def test_a_merge_patch_changes_only_what_it_names(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, task_row: TaskRow
) -> None:
    task = await create_task(client, auth, {**task_with_secret(), "user_id": "u1", "tags": ["a"]})

    response = await patch(
        client,
        auth,
        task["id"],
        {"source": {"params": {"start_date": "2026-02-01", "units": None, "tz": "UTC"}}},
    )

    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["source"]["params"] == {"start_date": "2026-02-01", "tz": "UTC"}
    assert changed["source"]["headers"] == {"Accept": "application/json"}
    assert changed["source"]["auth"] == {"type": "bearer", "token": "****wxyz"}
    assert changed["user_id"] == "u1"
    assert changed["tags"] == ["a"]
    assert changed["id"] == task["id"]
    assert await stored_auth(settings, task_row, task["id"]) == {"type": "bearer", "token": TOKEN}


async def test_null_removes_an_optional_field(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(
        client, auth, {**task_with_secret(), "user_id": "u1", "schedule": {"every_seconds": 600}}
    )
    response = await patch(client, auth, task["id"], {"user_id": None, "schedule": None})
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] is None
    assert response.json()["schedule"] is None


async def test_echoing_the_masked_token_keeps_the_real_secret(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, task_row: TaskRow
) -> None:
    task = await create_task(client, auth, task_with_secret())
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert shown["source"]["auth"]["token"] == "****wxyz"
    source = {**shown["source"], "params": {"start_date": "2026-03-01"}}

    response = await patch(client, auth, task["id"], {"source": source})

    assert response.status_code == 200, response.text
    assert response.json()["source"]["auth"]["token"] == "****wxyz"
    assert await stored_auth(settings, task_row, task["id"]) == {"type": "bearer", "token": TOKEN}


async def test_a_new_token_replaces_the_secret(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, task_row: TaskRow
) -> None:
    task = await create_task(client, auth, task_with_secret())

    response = await patch(
        client, auth, task["id"], {"source": {"auth": {"token": "another-token-0000"}}}
    )

    assert response.status_code == 200, response.text
    assert response.json()["source"]["auth"]["token"] == "****0000"
    assert "another-token-0000" not in response.text
    assert await stored_auth(settings, task_row, task["id"]) == {
        "type": "bearer",
        "token": "another-token-0000",
    }


async def test_switching_to_basic_auth_masks_the_password(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, task_row: TaskRow
) -> None:
    task = await create_task(client, auth, task_with_secret())
    basic = {"type": "basic", "username": "bob", "password": "basic-pass-7777"}

    response = await patch(client, auth, task["id"], {"source": {"auth": {**basic, "token": None}}})

    assert response.status_code == 200, response.text
    assert response.json()["source"]["auth"] == {**basic, "password": "****7777"}
    assert await stored_auth(settings, task_row, task["id"]) == basic


INVALID_PATCHES: list[tuple[dict[str, Any], list[str | int]]] = [
    ({"source": {"url": "ftp://example.com/x"}}, ["body", "source", "url"]),
    ({"source": {"headers": {"Authorization": "Bearer x"}}}, ["body", "source", "headers"]),
    (
        {"source": {"pagination": {"type": "cursor"}}},
        ["body", "source", "pagination", "cursor", "cursor_path"],
    ),
    ({"source": {"primary_key": None}}, ["body", "source", "primary_key"]),
    ({"schedule": {"every_seconds": 30}}, ["body", "schedule", "every_seconds"]),
    (
        {"schedule": {"cron": "0 6 * * *", "timezone": "Nowhere/Land"}},
        ["body", "schedule", "timezone"],
    ),
    ({"name": None}, ["body", "name"]),
    ({"name": "spaces are not allowed"}, ["body", "name"]),
    ({"tags": ["fine", ""]}, ["body", "tags", 1]),
    ({"retry": {"max_attempts": 0}}, ["body", "retry", "max_attempts"]),
    ({"limits": {"nonsense": 1}}, ["body", "limits", "nonsense"]),
    ({"state": "paused"}, ["body", "state"]),
    ({"paused": "sometimes"}, ["body", "paused"]),
    ({"source": "https://example.com"}, ["body", "source"]),
    ({"source": {"params": {"n": 2**64}}}, ["body", "source", "params", "n"]),
    ({"health_mapping": {"x": "a\u0000b"}}, ["body", "health_mapping", "x"]),
    ({"user_id": "nul\u0000"}, ["body", "user_id"]),
]


async def test_an_invalid_patch_is_refused_at_the_field_and_changes_nothing(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, task_with_secret())

    for body, where in INVALID_PATCHES:
        response = await patch(client, auth, task["id"], body)

        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert where in [error["loc"] for error in response.json()["errors"]], body
        assert TOKEN not in response.text
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json() == task


async def test_a_deeply_nested_patch_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, task_with_secret())
    deep: Any = 1
    for _ in range(600):
        deep = {"a": deep}

    response = await patch(client, auth, task["id"], {"health_mapping": deep})

    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["msg"].startswith("nested deeper than")


async def test_renaming_onto_a_taken_name_is_a_conflict(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await create_task(client, auth, http_task(URL, name="taken"))
    task = await create_task(client, auth, http_task(URL, name="mine"))

    response = await patch(client, auth, task["id"], {"name": "taken"})
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"

    renamed = await patch(client, auth, task["id"], {"name": "free"})
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "free"
    same = await patch(client, auth, task["id"], {"name": "free"})
    assert same.status_code == 200


async def test_patching_a_missing_task_is_404(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await patch(client, auth, "tsk_doesnotexist", {"paused": True})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_delete_then_get_is_404(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task = await create_task(client, auth, task_with_secret())

    deleted = await client.delete(f"/v1/tasks/{task['id']}", headers=auth)
    assert deleted.status_code == 204
    assert deleted.content == b""

    for response in (
        await client.get(f"/v1/tasks/{task['id']}", headers=auth),
        await client.delete(f"/v1/tasks/{task['id']}", headers=auth),
        await patch(client, auth, task["id"], {"paused": True}),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/v1/tasks", headers=auth)).json()["items"] == []
    again = await client.post("/v1/tasks", json=task_with_secret(), headers=auth)
    assert again.status_code == 201
    assert again.json()["id"] != task["id"]


async def count_rows(settings: Settings, task_id: str) -> dict[str, int]:
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            return {
                table: (
                    await connection.execute(
                        text(f"SELECT COUNT(*) FROM {table} WHERE {column} = :id"),  # noqa: S608
                        {"id": task_id},
                    )
                ).scalar_one()
                for table, column in (
                    ("task", "id"),
                    ("task_tag", "task_id"),
                    ("run", "task_id"),
                    ("record", "task_id"),
                )
            }
    finally:
        await engine.dispose()


async def test_delete_removes_its_runs_records_and_tags_only(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    settings: Settings,
    upstream: Upstream,
    worker: object,
) -> None:
    url = upstream.route("/items", cursor(make_records(30), size=10))
    pagination = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}
    doomed = await create_task(
        client,
        auth,
        {
            **http_task(url, name="doomed", records_path="data", pagination=pagination),
            "tags": ["x"],
        },
    )
    kept = await create_task(
        client,
        auth,
        {**http_task(url, name="kept", records_path="data", pagination=pagination), "tags": ["x"]},
    )
    runs = [await sync(client, auth, task["id"]) for task in (doomed, kept)]
    assert [run["status"] for run in runs] == ["succeeded", "succeeded"]
    assert await count_rows(settings, doomed["id"]) == {
        "task": 1,
        "task_tag": 1,
        "run": 1,
        "record": 30,
    }
    assert (await client.get(f"/v1/tasks/{doomed['id']}", headers=auth)).json()["last_run"][
        "status"
    ] == "succeeded"

    assert (await client.delete(f"/v1/tasks/{doomed['id']}", headers=auth)).status_code == 204

    assert await count_rows(settings, doomed["id"]) == {
        "task": 0,
        "task_tag": 0,
        "run": 0,
        "record": 0,
    }
    assert await count_rows(settings, kept["id"]) == {
        "task": 1,
        "task_tag": 1,
        "run": 1,
        "record": 30,
    }
    assert (await client.get(f"/v1/tasks/{doomed['id']}/records", headers=auth)).status_code == 404
    assert (await client.get(f"/v1/tasks/{doomed['id']}/runs", headers=auth)).status_code == 404
    assert (await client.get(f"/v1/runs/{runs[0]['id']}", headers=auth)).status_code == 404
    assert (await client.get(f"/v1/runs/{runs[1]['id']}", headers=auth)).status_code == 200
    assert len(await feed(client, auth, kept["id"])) == 30
