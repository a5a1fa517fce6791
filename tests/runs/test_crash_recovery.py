"""Nothing lost: a worker killed with SIGKILL mid-run, or Redis losing the queue."""

from __future__ import annotations

import asyncio
import collections
import os
import signal

import httpx
import redis.asyncio as aioredis

from service.config import Settings
from tests.fixtures.app import SpawnWorker
from tests.fixtures.upstream import Upstream, cursor, make_records, slowly
from tests.helpers import create_task, feed, http_task, trigger, wait_run

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}
FAST_RECOVERY = {
    "lease_seconds": "1",
    "reconcile_interval_seconds": "0.2",
    "queued_grace_seconds": "0.5",
}


async def _pages_done(client: httpx.AsyncClient, auth: dict[str, str], run_id: str) -> int:
    run = (await client.get(f"/v1/runs/{run_id}", headers=auth)).json()
    pages: int = run["stats"]["pages"]
    return pages


async def test_a_worker_killed_mid_run_is_finished_by_another_without_loss_or_duplicates(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, spawn_worker: SpawnWorker
) -> None:
    records = make_records(300)
    pages = cursor(records, size=10)

    url = upstream.route("/wearable", slowly(pages, 0.05))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    doomed = spawn_worker(**FAST_RECOVERY)
    run = await trigger(client, auth, task["id"])
    await wait_run(client, auth, run["id"], until={"running"}, timeout=30)
    while await _pages_done(client, auth, run["id"]) < 5:
        await asyncio.sleep(0.02)

    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    killed_at_page = await _pages_done(client, auth, run["id"])
    spawn_worker(**FAST_RECOVERY)
    final = await wait_run(client, auth, run["id"], timeout=60)

    assert final["status"] == "succeeded", final
    assert 5 <= killed_at_page < 30
    items = await feed(client, auth, task["id"])
    assert [item["data"] for item in items] == records  # exactly the upstream's, in order
    assert final["stats"]["inserted"] == 300 and final["stats"]["pages"] == 30
    asked = collections.Counter(
        seen.query.get("next_token", "") for seen in upstream.hits("/wearable")
    )
    assert asked[""] == 1  # the first page was fetched once
    assert set(asked) == {"" if i == 0 else str(i * 10) for i in range(30)}
    # Only pages not committed at the kill are fetched again: the one being stored and
    # the one read ahead.
    assert sum(asked.values()) <= 32


async def test_runs_lost_from_redis_are_resent_from_the_database(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    spawn_worker: SpawnWorker,
    settings: Settings,
) -> None:
    url = upstream.route("/lost", cursor(make_records(20), size=10))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    run = await trigger(client, auth, task["id"])
    redis = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        assert await redis.exists(f"arq:job:run:{run['id']}") == 1
        await redis.delete(settings.queue_name, f"arq:job:run:{run['id']}")  # as a flush would
    finally:
        await redis.aclose()

    spawn_worker(**FAST_RECOVERY)
    final = await wait_run(client, auth, run["id"], timeout=30)

    assert final["status"] == "succeeded"
    assert final["stats"]["inserted"] == 20
