"""A tenant's cap on running runs, end to end: real workers on real Redis, a slow
upstream on loopback counting the requests each tenant has in flight."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.config import Settings
from tests.fixtures.app import MakeKey, SpawnWorker, running_worker
from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, trigger, wait_run

REASON = "tenant_concurrency_limit"


class InFlight:
    """Requests in flight per tenant (the first part of the path), and the most seen."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.now: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()

    async def __call__(self, request: Request) -> Response:
        tenant = request.url.path.split("/")[1]
        self.now[tenant] += 1
        self.peak[tenant] = max(self.peak[tenant], self.now[tenant])
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.now[tenant] -= 1
        return JSONResponse([{"id": request.url.path}])


async def _tasks(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    handler: InFlight,
    tenant: str,
    count: int,
) -> list[dict[str, Any]]:
    return [
        await create_task(
            client,
            auth,
            http_task(upstream.route(f"/{tenant}/{i}", handler), name=f"{tenant}{i}"),
        )
        for i in range(count)
    ]


async def _waiting(
    client: httpx.AsyncClient, auth: dict[str, str], tasks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The tasks' runs that are queued, waiting for the cap, as the runs list shows them."""
    while True:
        runs = []
        for task in tasks:
            page = await client.get(f"/v1/tasks/{task['id']}/runs", headers=auth)
            runs += page.json()["items"]
        waiting = [run for run in runs if run["waiting_reason"] == REASON]
        if waiting:
            return waiting
        await asyncio.sleep(0.02)


async def test_a_tenant_runs_at_most_its_cap_the_rest_wait_queued_and_others_go_ahead(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_key: MakeKey,
    upstream: Upstream,
    settings: Settings,
) -> None:
    capped = settings.model_copy(update={"tenant_max_running": 2, "worker_max_jobs": 10})
    slow = InFlight(0.5)
    tasks = await _tasks(client, auth, upstream, slow, "acme", 6)
    other_auth = await make_key("globex")
    other_task = (await _tasks(client, other_auth, upstream, slow, "globex", 1))[0]
    runs = [await trigger(client, auth, task["id"]) for task in tasks]  # queued before it starts

    async with running_worker(capped):
        waiting = await asyncio.wait_for(_waiting(client, auth, tasks), timeout=15)
        other = await trigger(client, other_auth, other_task["id"])
        other_final = await wait_run(client, other_auth, other["id"], timeout=15)
        finals = [await wait_run(client, auth, run["id"], timeout=60) for run in runs]

    assert {run["status"] for run in waiting} == {"queued"}
    assert all(run["attempt"] == 1 and run["started_at"] is None for run in waiting)
    # every run once, never more than two at a time (and two: the cap, not one by one)
    assert [final["status"] for final in finals] == ["succeeded"] * 6
    assert sorted(seen.path for seen in upstream.requests if seen.path.startswith("/acme")) == [
        f"/acme/{i}" for i in range(6)
    ]
    assert slow.peak["acme"] == 2
    # waiting spent no attempt (one, the successful one), and a started run no longer
    # says it waits
    assert {(f["attempt"], _errors(f), f["waiting_reason"]) for f in finals} == {(1, 0, None)}
    # the other tenant's run did not queue behind acme's backlog
    assert other_final["status"] == "succeeded" and other_final["waiting_reason"] is None
    assert other_final["started_at"] < max(final["started_at"] for final in finals)


async def test_two_worker_processes_together_keep_the_cap(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    spawn_worker: SpawnWorker,
) -> None:
    """Each process could start every run (three slots each); together they start two
    of the tenant's at a time, claiming from two processes at once
    (`tests/runs/test_tenant_cap_ledger.py` races them statement against statement)."""
    slow = InFlight(0.3)
    tasks = await _tasks(client, auth, upstream, slow, "acme", 8)
    runs = [await trigger(client, auth, task["id"]) for task in tasks]
    for _ in range(2):
        spawn_worker(tenant_max_running="2", worker_max_jobs="3")

    finals = [await wait_run(client, auth, run["id"], timeout=90) for run in runs]

    assert [final["status"] for final in finals] == ["succeeded"] * 8
    assert sorted(seen.path for seen in upstream.requests) == [f"/acme/{i}" for i in range(8)]
    assert slow.peak["acme"] == 2
    assert {(f["attempt"], _errors(f)) for f in finals} == {(1, 0)}


def _errors(run: dict[str, Any]) -> int:
    """Attempts of the run that ended in an error (the successful one records none)."""
    return sum(1 for attempt in run["attempts"] if attempt["error"] is not None)
