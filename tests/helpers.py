"""Small helpers shared by API tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

FINAL = {"succeeded", "failed", "cancelled"}


def http_task(url: str, name: str = "t1", **source: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "source": {"url": url, "primary_key": "id", **source}}
    return body


async def create_task(
    client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    response = await client.post("/v1/tasks", json=body, headers=auth)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def trigger(client: httpx.AsyncClient, auth: dict[str, str], task_id: str) -> dict[str, Any]:
    response = await client.post(f"/v1/tasks/{task_id}/runs", headers=auth)
    assert response.status_code in (200, 202), response.text
    run: dict[str, Any] = response.json()
    return run


async def wait_run(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    run_id: str,
    *,
    until: set[str] = FINAL,
    timeout: float = 30,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/v1/runs/{run_id}", headers=auth)
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        if run["status"] in until:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s: {run}")
        await asyncio.sleep(0.02)


async def sync(client: httpx.AsyncClient, auth: dict[str, str], task_id: str) -> dict[str, Any]:
    run = await trigger(client, auth, task_id)
    return await wait_run(client, auth, run["id"])


async def feed(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str, after: int = 0
) -> list[dict[str, Any]]:
    """Every record after `after`, following `next_after` to the end."""
    items: list[dict[str, Any]] = []
    while True:
        response = await client.get(
            f"/v1/tasks/{task_id}/records", params={"after": after, "limit": 1000}, headers=auth
        )
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if not page["items"]:
            return items
        after = page["next_after"]
