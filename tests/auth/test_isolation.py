"""Tenants never see each other: another tenant's id answers 404, never 403 (SPEC §2)."""

from __future__ import annotations

import httpx

from tests.fixtures.app import MakeKey
from tests.helpers import create_task, http_task, trigger

URL = "https://api.example.com/items"


async def test_another_tenants_task_and_runs_are_404_everywhere(
    client: httpx.AsyncClient, auth: dict[str, str], make_key: MakeKey
) -> None:
    other = await make_key("globex")
    task = await create_task(
        client, auth, http_task(URL, auth={"type": "bearer", "token": "acme-secret-token-1234"})
    )
    run = await trigger(client, auth, task["id"])
    task_id, run_id = task["id"], run["id"]

    for method, path, body in [
        ("GET", f"/v1/tasks/{task_id}", None),
        ("PATCH", f"/v1/tasks/{task_id}", {"paused": True}),
        ("DELETE", f"/v1/tasks/{task_id}", None),
        ("POST", f"/v1/tasks/{task_id}/runs", None),
        ("GET", f"/v1/tasks/{task_id}/runs", None),
        ("GET", f"/v1/runs/{run_id}", None),
        ("POST", f"/v1/runs/{run_id}/cancel", None),
        ("GET", f"/v1/tasks/{task_id}/records", None),
    ]:
        response = await client.request(method, path, json=body, headers=other)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert "acme-secret-token-1234" not in response.text

    # A missing id looks exactly the same as another tenant's (nothing leaks).
    missing = await client.get("/v1/tasks/tsk_doesnotexist", headers=other)
    theirs = await client.get(f"/v1/tasks/{task_id}", headers=other)
    assert set(missing.json()) == set(theirs.json())
    assert missing.json()["title"] == theirs.json()["title"]

    # Nothing the other tenant did touched acme's task or run.
    mine = (await client.get(f"/v1/tasks/{task_id}", headers=auth)).json()
    assert mine["paused"] is False
    assert (await client.get(f"/v1/runs/{run_id}", headers=auth)).json()["status"] == "queued"
    runs = (await client.get(f"/v1/tasks/{task_id}/runs", headers=auth)).json()["items"]
    assert [item["id"] for item in runs] == [run_id]


async def test_lists_show_only_the_callers_tasks(
    client: httpx.AsyncClient, auth: dict[str, str], make_key: MakeKey
) -> None:
    other = await make_key("globex")
    mine = await create_task(
        client, auth, {**http_task(URL, name="a"), "user_id": "u1", "tags": ["t"]}
    )
    theirs = await create_task(
        client, other, {**http_task(URL, name="b"), "user_id": "u1", "tags": ["t"]}
    )

    for params in ({}, {"user_id": "u1"}, {"tag": "t"}, {"state": "active"}):
        listed = (await client.get("/v1/tasks", params=params, headers=auth)).json()["items"]
        assert [task["id"] for task in listed] == [mine["id"]]
        listed = (await client.get("/v1/tasks", params=params, headers=other)).json()["items"]
        assert [task["id"] for task in listed] == [theirs["id"]]


async def test_a_cursor_from_another_tenant_reveals_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], make_key: MakeKey
) -> None:
    other = await make_key("globex")
    for i in range(3):
        await create_task(client, other, http_task(URL, name=f"t{i}"))
    page = (await client.get("/v1/tasks", params={"limit": 1}, headers=other)).json()

    response = await client.get("/v1/tasks", params={"cursor": page["next_cursor"]}, headers=auth)
    assert response.status_code == 200
    assert response.json()["items"] == []


async def test_two_tenants_may_use_the_same_task_name(
    client: httpx.AsyncClient, auth: dict[str, str], make_key: MakeKey
) -> None:
    other = await make_key("globex")
    theirs = await create_task(client, other, http_task(URL, name="daily"))
    mine = await create_task(client, auth, http_task(URL, name="daily"))
    assert mine["id"] != theirs["id"]

    # on_conflict only ever sees the caller's own tasks.
    kept = await client.post(
        "/v1/tasks",
        json=http_task(URL, name="daily"),
        params={"on_conflict": "keep"},
        headers=other,
    )
    assert kept.status_code == 200
    assert kept.json()["id"] == theirs["id"]
    renamed = await client.patch(f"/v1/tasks/{mine['id']}", json={"name": "weekly"}, headers=auth)
    assert renamed.status_code == 200
    taken = await client.post("/v1/tasks", json=http_task(URL, name="weekly"), headers=other)
    assert taken.status_code == 201
