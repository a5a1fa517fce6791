"""GET /v1/tasks: cursor pagination, newest first, and the filters."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import create_task, http_task

URL = "https://api.example.com/items"


async def list_all(
    client: httpx.AsyncClient, auth: dict[str, str], **params: Any
) -> tuple[list[dict[str, Any]], int]:
    """Every task, following `next_cursor`; returns the items and how many pages it took."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/tasks", params=query, headers=auth)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 20, "the cursor never ends"


async def test_cursor_pages_give_every_task_once_newest_first(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    made = [await create_task(client, auth, http_task(URL, name=f"t{i}")) for i in range(5)]

    items, pages = await list_all(client, auth, limit=2)

    assert pages == 3
    assert [item["id"] for item in items] == [task["id"] for task in reversed(made)]
    first = (await client.get("/v1/tasks", params={"limit": 2}, headers=auth)).json()
    assert len(first["items"]) == 2
    assert first["next_cursor"]
    everything = (await client.get("/v1/tasks", params={"limit": 5}, headers=auth)).json()
    assert len(everything["items"]) == 5
    assert everything["next_cursor"] is None


async def test_an_empty_list(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.get("/v1/tasks", headers=auth)
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_filters_by_user_tag_and_state(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    a = await create_task(
        client, auth, {**http_task(URL, name="a"), "user_id": "u1", "tags": ["wearable", "daily"]}
    )
    b = await create_task(
        client, auth, {**http_task(URL, name="b"), "user_id": "u2", "tags": ["wearable"]}
    )
    c = await create_task(
        client, auth, {**http_task(URL, name="c"), "user_id": "u1", "paused": True}
    )

    async def ids(**params: Any) -> list[str]:
        items, _ = await list_all(client, auth, limit=1, **params)
        return [item["id"] for item in items]

    assert await ids(user_id="u1") == [c["id"], a["id"]]
    assert await ids(user_id="nobody") == []
    assert await ids(tag="wearable") == [b["id"], a["id"]]
    assert await ids(tag="daily") == [a["id"]]
    assert await ids(state="paused") == [c["id"]]
    assert await ids(state="active") == [b["id"], a["id"]]
    assert await ids(user_id="u1", state="active", tag="daily") == [a["id"]]


async def test_the_tag_filter_follows_tag_changes(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, {**http_task(URL), "tags": ["old"]})
    response = await client.patch(f"/v1/tasks/{task['id']}", json={"tags": ["new"]}, headers=auth)
    assert response.status_code == 200, response.text

    assert (await list_all(client, auth, tag="old"))[0] == []
    assert [item["id"] for item in (await list_all(client, auth, tag="new"))[0]] == [task["id"]]


async def test_an_invalid_cursor_is_a_422_problem(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for cursor in ("!!!", "bm90LWEtY3Vyc29y", "%%", "x" * 201, "4pyTIMOgIGxhIG1vZGU"):
        response = await client.get("/v1/tasks", params={"cursor": cursor}, headers=auth)
        assert response.status_code == 422, (cursor, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["loc"] == ["query", "cursor"]


async def test_bad_query_parameters_are_refused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"state": "deleted"}, "state"),
        ({"user_id": "u" * 201}, "user_id"),
    ]
    for params, where in cases:
        response = await client.get("/v1/tasks", params=params, headers=auth)
        assert response.status_code == 422, response.text
        assert [error["loc"] for error in response.json()["errors"]] == [["query", where]]
