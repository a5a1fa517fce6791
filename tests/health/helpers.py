"""Helpers for the health API tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

Auth = dict[str, str]


def steps(
    id_: str, value: float, start: str, end: str, source: str = "watch", **extra: Any
) -> dict[str, Any]:
    return {
        "id": id_,
        "source": source,
        "type": "steps",
        "value": value,
        "unit": "count",
        "start": start,
        "end": end,
        **extra,
    }


async def push(
    client: httpx.AsyncClient, auth: Auth, samples: list[Any], user_id: str = "u_42"
) -> dict[str, Any]:
    response = await client.post(
        "/v1/health/samples", json={"user_id": user_id, "samples": samples}, headers=auth
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/health/batches/{body['batch_id']}"
    return body


async def wait_batch(
    client: httpx.AsyncClient, auth: Auth, batch_id: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/v1/health/batches/{batch_id}", headers=auth)
        assert response.status_code == 200, response.text
        batch: dict[str, Any] = response.json()
        if batch["status"] != "pending":
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still pending after {timeout}s: {batch}")
        await asyncio.sleep(0.02)


async def ingest(
    client: httpx.AsyncClient, auth: Auth, samples: list[dict[str, Any]], user_id: str = "u_42"
) -> dict[str, Any]:
    """Push a batch and wait until the worker has stored it."""
    accepted = await push(client, auth, samples, user_id)
    batch = await wait_batch(client, auth, accepted["batch_id"])
    assert batch["status"] == "completed", batch
    return batch


async def changes(
    client: httpx.AsyncClient, auth: Auth, user_id: str = "u_42", after: int = 0
) -> list[dict[str, Any]]:
    """Every change after `after`, following `next_after` three at a time."""
    items: list[dict[str, Any]] = []
    while True:
        response = await client.get(
            "/v1/health/changes",
            params={"user_id": user_id, "after": after, "limit": 3},
            headers=auth,
        )
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if not page["items"]:
            assert page["next_after"] == after
            return items
        after = page["next_after"]


async def daily(
    client: httpx.AsyncClient, auth: Auth, type_: str, start: str, end: str, user_id: str = "u_42"
) -> dict[str, Any]:
    response = await client.get(
        "/v1/health/daily",
        params={"user_id": user_id, "type": type_, "start": start, "end": end},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
