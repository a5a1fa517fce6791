"""Losing Redis loses nothing and costs no attempt (README "Redis outages").

Redis sits behind a proxy (`tests.fixtures.redis_proxy`) that the tests cut and restore:
the worker, the API or both talk to Redis only through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.fixtures.app import SpawnWorker, api_client, running_worker
from tests.fixtures.redis_proxy import RedisProxy, redis_proxy
from tests.fixtures.upstream import Upstream, cursor, make_records, slowly
from tests.helpers import create_task, feed, http_task, trigger, wait_run

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}
FAST_RECOVERY = {
    "lease_seconds": "2",
    "reconcile_interval_seconds": "0.2",
    "queued_grace_seconds": "0.5",
}


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[RedisProxy]:
    async with redis_proxy(settings.redis_url or "") as running:
        yield running


@pytest.fixture
def proxied(settings: Settings, proxy: RedisProxy) -> Settings:
    """The test's settings, with Redis reached through the proxy."""
    return settings.model_copy(update={"redis_url": proxy.url})


async def _run(client: httpx.AsyncClient, auth: dict[str, str], run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}", headers=auth)).json()
    return run


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({}, id="no-rate-limit-keeps-going"),
        pytest.param({"requests_per_second": 1000}, id="rate-limited-pauses"),
    ],
)
async def test_a_run_outlives_redis_being_cut_mid_run_and_the_worker_stays_up(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    spawn_worker: SpawnWorker,
    proxy: RedisProxy,
    limits: dict[str, float],
) -> None:
    records = make_records(1000)
    url = upstream.route("/slow", slowly(cursor(records, size=10), 0.03))
    body = {
        **http_task(url, records_path="data", pagination=CURSOR),
        "retry": {"max_attempts": 1},
        "limits": limits,
    }
    task = await create_task(client, auth, body)
    worker = spawn_worker(redis_url=proxy.url, **FAST_RECOVERY)
    run = await trigger(client, auth, task["id"])
    while (await _run(client, auth, run["id"]))["stats"]["pages"] < 10:
        await asyncio.sleep(0.05)

    await proxy.cut()
    await asyncio.sleep(3)
    during = await _run(client, auth, run["id"])
    await proxy.restore()
    final = await wait_run(client, auth, run["id"], timeout=90)

    assert during["status"] == "running", during
    assert final["status"] == "succeeded", final
    assert final["attempt"] == 1 and final["error"] is None
    assert final["stats"]["inserted"] == 1000
    assert [item["data"] for item in await feed(client, auth, task["id"])] == records
    assert worker.poll() is None  # the worker process is still up
