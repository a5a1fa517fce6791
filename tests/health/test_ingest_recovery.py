"""Nothing lost, nothing twice: a worker killed with SIGKILL mid-ingest, a lost job."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import redis.asyncio as aioredis
from sqlalchemy import text

from service.config import Settings
from service.db import create_engine
from tests.fixtures.app import SpawnWorker
from tests.health.helpers import push, steps, wait_batch

FAST_RECOVERY = {
    "reconcile_interval_seconds": "0.2",
    "queued_grace_seconds": "0.5",
    # 500 chunks for 5,000 samples: the test must lock the user's row while chunks are
    # still to come, and with 100 a fast worker sometimes finished first.
    "health_ingest_chunk": "10",
}


def minutes(count: int) -> list[dict[str, Any]]:
    """`count` per-minute steps samples from 2026-11-01 on."""
    return [
        steps(
            f"m{n}",
            n % 120,
            f"2026-11-{1 + n // 1440:02d}T{n // 60 % 24:02d}:{n % 60:02d}:00Z",
            f"2026-11-{1 + n // 1440:02d}T{n // 60 % 24:02d}:{n % 60:02d}:59Z",
        )
        for n in range(count)
    ]


@asynccontextmanager
async def user_row_locked(settings: Settings, user_id: str) -> AsyncIterator[None]:
    """Hold the user's `health_user` row (on SQLite: the database's write lock) until
    the block ends: the worker's next chunk waits for it."""
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            await connection.execute(
                text("UPDATE health_user SET sample_seq = sample_seq WHERE user_id = :u"),
                {"u": user_id},
            )
            yield
            await connection.rollback()
    finally:
        await engine.dispose()


async def everything(client: httpx.AsyncClient, auth: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        params = {"user_id": "u_42", "after": str(after), "limit": "1000"}
        page = (await client.get("/v1/health/changes", params=params, headers=auth)).json()
        if not page["items"]:
            return items
        items += page["items"]
        after = page["next_after"]


async def test_a_worker_killed_mid_ingest_leaves_every_sample_exactly_once(
    client: httpx.AsyncClient, auth: dict[str, str], spawn_worker: SpawnWorker, settings: Settings
) -> None:
    samples = minutes(5000)
    doomed = spawn_worker(**FAST_RECOVERY)
    batch_id = (await push(client, auth, samples))["batch_id"]
    path = f"/v1/health/batches/{batch_id}"
    while (await client.get(path, headers=auth)).json()["ingested"] == 0:
        await asyncio.sleep(0.005)

    async with user_row_locked(settings, "u_42"):
        await asyncio.sleep(0.3)  # the worker is waiting inside its next chunk
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
    killed = (await client.get(path, headers=auth)).json()
    assert killed["status"] == "pending" and 0 < killed["ingested"] < 5000

    spawn_worker(**FAST_RECOVERY)
    batch = await wait_batch(client, auth, batch_id, timeout=60)

    assert batch["status"] == "completed"
    assert (batch["ingested"], batch["inserted"], batch["updated"], batch["unchanged"]) == (
        5000,
        0 + 5000,
        0,
        0,
    )
    feed = await everything(client, auth)
    assert [item["seq"] for item in feed] == list(range(1, 5001))
    assert sorted(item["id"] for item in feed) == sorted(sample["id"] for sample in samples)
    events = await client.get("/v1/events", params={"type": "health.batch.completed"}, headers=auth)
    assert [event["data"]["batch_id"] for event in events.json()["items"]] == [batch_id]


async def test_a_batch_lost_from_redis_is_resent_from_the_database(
    client: httpx.AsyncClient, auth: dict[str, str], spawn_worker: SpawnWorker, settings: Settings
) -> None:
    batch_id = (await push(client, auth, minutes(10)))["batch_id"]
    redis = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        assert await redis.exists(f"arq:job:health:{batch_id}") == 1
        await redis.delete(settings.queue_name, f"arq:job:health:{batch_id}")  # as a flush would
    finally:
        await redis.aclose()

    spawn_worker(**FAST_RECOVERY)
    batch = await wait_batch(client, auth, batch_id, timeout=30)
    assert batch["status"] == "completed" and batch["inserted"] == 10
