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


async def test_the_api_starts_and_serves_without_redis_and_a_trigger_is_sent_once_it_is_back(
    proxied: Settings, proxy: RedisProxy, upstream: Upstream, auth: dict[str, str]
) -> None:
    url = upstream.route("/later", cursor(make_records(30), size=10))
    fast = proxied.model_copy(
        update={"reconcile_interval_seconds": 0.2, "queued_grace_seconds": 0.5}
    )
    await proxy.cut()
    async with api_client(fast) as client:
        ready = await client.get("/readyz")
        task = await create_task(
            client, auth, http_task(url, records_path="data", pagination=CURSOR)
        )
        listed = await client.get("/v1/tasks", headers=auth)
        run = await trigger(client, auth, task["id"])
        async with running_worker(fast):  # a worker started now waits for Redis
            await asyncio.sleep(1)
            before = await _run(client, auth, run["id"])
            await proxy.restore()
            final = await wait_run(client, auth, run["id"], timeout=30)
        ready_again = await client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "database": True,
        "redis": False,
        "migrations": True,
    }
    assert listed.status_code == 200 and [t["id"] for t in listed.json()["items"]] == [task["id"]]
    assert run["status"] == "queued"
    assert before["status"] == "queued"  # stored, waiting for Redis
    assert final["status"] == "succeeded" and final["stats"]["inserted"] == 30
    assert ready_again.status_code == 200 and ready_again.json()["redis"] is True


async def test_api_requests_do_not_wait_on_a_redis_that_stopped_answering(
    proxied: Settings, proxy: RedisProxy, auth: dict[str, str]
) -> None:
    """A partition (connections accepted, nothing answered): the per-key rate limit asks
    Redis once, waits out one timeout, then skips Redis until its next probe, far away
    here; without that every request would wait (arq's pool has no read timeout: for
    ever)."""
    limited = proxied.model_copy(
        update={
            "api_rate_per_second": 50,
            "redis_timeout_seconds": 0.5,
            "redis_probe_seconds": 3600,
        }
    )
    async with api_client(limited) as client:
        assert (await client.get("/v1/tasks", headers=auth)).status_code == 200  # connected
        await proxy.blackhole()
        async with asyncio.timeout(60):
            answers = [(await client.get("/v1/tasks", headers=auth)).status_code for _ in range(20)]
        await proxy.restore()

    assert answers == [200] * 20
    assert proxy.accepted_while_blackholed == 1  # one probe; the other 19 skipped Redis


async def test_a_pause_longer_than_the_limit_ends_the_attempt_without_counting_it(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    spawn_worker: SpawnWorker,
    proxy: RedisProxy,
) -> None:
    """A rate-limited host's run waits for Redis `BACKSYNC_REDIS_OUTAGE_MAX_WAIT_SECONDS`
    (1 s here), then parks as `retrying` with `broker_unavailable`; with `max_attempts`
    1 it still finishes once Redis is back."""
    records = make_records(300)
    url = upstream.route("/metered", slowly(cursor(records, size=10), 0.03))
    body = {
        **http_task(url, records_path="data", pagination=CURSOR),
        "retry": {"max_attempts": 1, "initial_delay_seconds": 0.1},
        "limits": {"requests_per_second": 1000},
    }
    task = await create_task(client, auth, body)
    worker = spawn_worker(redis_url=proxy.url, redis_outage_max_wait_seconds="1", **FAST_RECOVERY)
    run = await trigger(client, auth, task["id"])
    while (await _run(client, auth, run["id"]))["stats"]["pages"] < 5:
        await asyncio.sleep(0.05)

    await proxy.cut()
    parked = await wait_run(client, auth, run["id"], until={"retrying", "failed"}, timeout=30)
    await asyncio.sleep(1)
    await proxy.restore()
    final = await wait_run(client, auth, run["id"], timeout=60)

    assert parked["status"] == "retrying", parked
    assert parked["error"]["code"] == "broker_unavailable" and parked["error"]["retryable"]
    assert final["status"] == "succeeded", final
    codes = [attempt["error"] and attempt["error"]["code"] for attempt in final["attempts"]]
    assert codes == ["broker_unavailable", None] and final["attempt"] == 2
    assert final["attempts"][0]["counted"] is False
    assert final["stats"]["inserted"] == 300
    assert [item["data"] for item in await feed(client, auth, task["id"])] == records
    assert worker.poll() is None
