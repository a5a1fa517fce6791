"""One worker, many queued runs: every run once, never more at a time than `max_jobs`."""

from __future__ import annotations

import asyncio

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.config import Settings
from tests.fixtures.app import running_worker
from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, trigger, wait_run


async def test_a_backlog_runs_once_each_within_max_jobs(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    in_flight, peak = 0, 0

    async def slow(request: Request) -> Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        return JSONResponse([{"id": request.url.path}])

    tasks = [
        await create_task(client, auth, http_task(upstream.route(f"/slot/{i}", slow), name=f"t{i}"))
        for i in range(30)
    ]
    runs = [await trigger(client, auth, task["id"]) for task in tasks]  # queued before it starts

    async with running_worker(settings):
        finals = [await wait_run(client, auth, run["id"], timeout=60) for run in runs]

    assert [final["status"] for final in finals] == ["succeeded"] * 30
    assert sorted(seen.path for seen in upstream.requests) == sorted(
        f"/slot/{i}" for i in range(30)
    )
    assert 1 < peak <= settings.worker_max_jobs


async def test_a_trigger_rings_a_worker_that_seldom_polls(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    """Every enqueue rings the workers' doorbell: a worker whose fallback poll is a
    minute away still starts the run at once (without the ring, the wait times out)."""
    seldom = settings.model_copy(update={"worker_poll_delay": 60.0})
    task = await create_task(client, auth, http_task(upstream.route("/ring", _one_record)))

    async with running_worker(seldom):
        await asyncio.sleep(0.5)  # past its first poll: from here on it waits for a ring
        runs = [await trigger(client, auth, task["id"])]
        runs.append(await wait_run(client, auth, runs[0]["id"], timeout=15))
        # and again, now that it has waited once
        runs.append(await trigger(client, auth, task["id"]))
        runs.append(await wait_run(client, auth, runs[2]["id"], timeout=15))

    assert [run["status"] for run in runs[1::2]] == ["succeeded", "succeeded"]
    assert len(upstream.hits("/ring")) == 2


def _one_record(_request: Request) -> Response:
    return JSONResponse([{"id": "only"}])


async def test_a_freed_slot_starts_the_next_queued_run_without_a_poll(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    """A full worker polls again the moment a run ends, not at its next idle poll (a
    minute away here: without that, the backlog would wait for it)."""
    seldom = settings.model_copy(update={"worker_poll_delay": 60.0, "worker_max_jobs": 2})
    tasks = [
        await create_task(
            client, auth, http_task(upstream.route(f"/freed/{i}", _one_record), name=f"f{i}")
        )
        for i in range(6)
    ]
    runs = [await trigger(client, auth, task["id"]) for task in tasks]  # queued before it starts

    async with running_worker(seldom):
        finals = [await wait_run(client, auth, run["id"], timeout=15) for run in runs]

    assert [final["status"] for final in finals] == ["succeeded"] * 6
    assert sorted(seen.path for seen in upstream.requests) == [f"/freed/{i}" for i in range(6)]
