"""A worker killed mid-run while syncing a wearable task: records and their health
samples commit together, so neither is ever stored without the other. No in-process
worker here: only the spawned ones may touch the run."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import httpx

from tests.fixtures.app import SpawnWorker
from tests.fixtures.upstream import HEART_RATE_MAPPING, Upstream, cursor, heart_rate_day, slowly
from tests.health.test_wearable import wearable_task
from tests.helpers import create_task, feed, trigger, wait_run
from tests.runs.test_crash_recovery import FAST_RECOVERY


async def _all_samples(client: httpx.AsyncClient, auth: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        response = await client.get(
            "/v1/health/changes",
            params={"user_id": "u_42", "after": after, "limit": 1000},
            headers=auth,
        )
        page = response.json()
        if not page["items"]:
            return items
        items.extend(page["items"])
        after = page["next_after"]


async def _pages_done(client: httpx.AsyncClient, auth: dict[str, str], run_id: str) -> int:
    run = (await client.get(f"/v1/runs/{run_id}", headers=auth)).json()
    pages: int = run["stats"]["pages"]
    return pages


async def test_a_worker_killed_mid_run_leaves_records_and_samples_consistent(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, spawn_worker: SpawnWorker
) -> None:
    """SIGKILL between and during page commits: whatever records are stored have all
    their samples, and no sample exists without its record; the run then finishes in
    another worker with every sample once."""
    days = [heart_rate_day(f"2026-10-{d:02d}", 20) for d in range(1, 31)]
    url = upstream.route("/v2/heartrate", slowly(cursor(days, size=2), 0.05))
    task = await create_task(client, auth, wearable_task(url, HEART_RATE_MAPPING, "hr"))
    doomed = spawn_worker(**FAST_RECOVERY)
    run = await trigger(client, auth, task["id"])
    while await _pages_done(client, auth, run["id"]) < 4:
        await asyncio.sleep(0.02)

    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    records = await feed(client, auth, task["id"])
    stored = await _all_samples(client, auth)
    assert 8 <= len(records) < 30
    days_stored = {item["key"] for item in records}
    assert {sample["id"].split(":")[0] for sample in stored} == days_stored
    assert len(stored) == 20 * len(records)

    spawn_worker(**FAST_RECOVERY)
    final = await wait_run(client, auth, run["id"], timeout=60)

    assert final["status"] == "succeeded", final
    everything = await _all_samples(client, auth)
    assert len(everything) == len({sample["id"] for sample in everything}) == 600
    assert everything[: len(stored)] == stored  # the committed ones were not written again
    assert len(await feed(client, auth, task["id"])) == 30
