"""Each push URL has its own budget of calls, shared by every API process (Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from service.config import Settings
from tests.fixtures.app import api_client
from tests.helpers import create_task, http_task
from tests.push.helpers import make_push_url, push_path

URL = "https://api.example.com/items"
RATE = 3


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    """Two API apps (two processes, as far as the limit knows) with a small rate."""
    small = settings.model_copy(update={"push_rate_per_minute": RATE})
    async with api_client(small) as first, api_client(small) as second:
        yield first, second


async def test_past_the_rate_a_push_url_answers_429_with_retry_after_across_processes(
    limited: tuple[httpx.AsyncClient, httpx.AsyncClient], auth: dict[str, str]
) -> None:
    first, second = limited
    task = await create_task(first, auth, http_task(URL))
    path = push_path(await make_push_url(first, auth, task["id"]))
    other = push_path(await make_push_url(first, auth, task["id"]))

    answers = [await (first if i % 2 else second).post(path) for i in range(RATE)]
    assert [a.status_code for a in answers] == [202] * RATE
    refused = await second.post(path)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 60 // RATE
    assert (await first.get(path, params={"challenge": "c"})).status_code == 429
    # Another URL of the same task has its own budget.
    assert (await first.post(other)).status_code == 202
    listed = await first.get(f"/v1/tasks/{task['id']}/push-urls", headers=auth)
    counts = {item["id"]: item["call_count"] for item in listed.json()["items"]}
    assert sorted(counts.values()) == [1, RATE]  # refused calls are not counted


async def test_an_unknown_token_is_404_not_429(
    limited: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, _ = limited
    statuses = {(await first.post("/v1/push/bkp_nothing")).status_code for _ in range(RATE + 2)}
    assert statuses == {404}
