"""Shared by the push URL tests."""

from __future__ import annotations

from typing import Any

import httpx


async def make_push_url(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str, **body: Any
) -> dict[str, Any]:
    response = await client.post(f"/v1/tasks/{task_id}/push-urls", json=body, headers=auth)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def push_path(created: dict[str, Any]) -> str:
    """The path of a push URL (the test client has its own base URL)."""
    path = httpx.URL(created["url"]).path
    assert path == f"/v1/push/{created['token']}"
    return path
