"""Bounded memory whatever a tenant configures (issue: hardening, item 1): a task cannot
raise its response limit past the server's cap, a decompression bomb fails its run (and
its dry run) after its first MiB, and a worker's runs share one in-flight byte budget.
Real worker, Redis, database and upstream on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from starlette.responses import Response

from service.config import Settings
from tests.fixtures.app import api_client, running_worker
from tests.fixtures.upstream import Upstream, gzip_bomb, gzipped, make_records
from tests.helpers import create_task, http_task, sync, trigger, wait_run

MiB = 1024 * 1024
ONCE = {"max_attempts": 1}


def _bodies(worker: Any) -> Any:
    """The worker's `BodyBudget` (what its runs hold of bodies, and the most they held)."""
    return worker.ctx["deps"].bodies


async def test_a_gzip_bomb_fails_the_run_without_the_worker_inflating_it(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    worker: Any,
    settings: Settings,
) -> None:
    """The issue's task: a small gzip that inflates to 50 MiB of JSON, the task's limit at
    the server's cap (10 MiB by default; 512 MiB is refused, below)."""
    url = upstream.route("/bomb", lambda _r: gzipped(gzip_bomb()))
    body = {
        **http_task(url, records_path="data"),
        "limits": {"max_response_bytes": settings.max_response_bytes},
        "retry": ONCE,
    }
    task = await create_task(client, auth, body)

    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed", run
    assert (run["error"]["code"], run["error"]["retryable"]) == (
        "compression_ratio_exceeded",
        False,
    )
    assert "inflates more than 100 times" in run["error"]["message"]
    assert _bodies(worker).peak < 10 * MiB  # the engine never held the 50 MiB
    assert _bodies(worker).used == 0


async def test_a_limit_past_the_servers_cap_is_refused_at_registration(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    url = upstream.route("/ok", lambda _r: Response(orjson.dumps(make_records(2))))
    body = {**http_task(url), "limits": {"max_response_bytes": 512 * MiB}}

    refused = await client.post("/v1/tasks", json=body, headers=auth)
    task = await create_task(client, auth, http_task(url))  # the default is fine
    patched = await client.patch(
        f"/v1/tasks/{task['id']}", json={"limits": {"max_response_bytes": 512 * MiB}}, headers=auth
    )
    at_the_cap = await client.patch(
        f"/v1/tasks/{task['id']}",
        json={"limits": {"max_response_bytes": settings.max_response_bytes}},
        headers=auth,
    )

    for response in (refused, patched):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        (error,) = response.json()["errors"]
        assert error["loc"] == ["body", "limits", "max_response_bytes"]
        assert f"at most {settings.max_response_bytes}" in error["msg"]
        assert "BACKSYNC_MAX_RESPONSE_BYTES" in error["msg"]
    assert at_the_cap.status_code == 200, at_the_cap.text


async def test_a_task_stored_before_the_cap_is_held_to_it_when_it_runs(
    auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    """Registered when the server allowed 512 MiB; the worker's cap is 1 MiB now."""
    big = orjson.dumps({"data": make_records(30_000)})  # ~1.4 MB
    url = upstream.route("/big", lambda _r: Response(big, media_type="application/json"))
    before = settings.model_copy(update={"max_response_bytes": 512 * MiB})
    body = {
        **http_task(url, records_path="data"),
        "limits": {"max_response_bytes": 512 * MiB},
        "retry": ONCE,
    }
    async with api_client(before) as client:
        task = await create_task(client, auth, body)
    now = settings.model_copy(update={"max_response_bytes": MiB})

    async with api_client(now) as client, running_worker(now):
        run = await sync(client, auth, task["id"])

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "response_too_large"
    assert f"max_response_bytes={MiB}" in run["error"]["message"]


async def test_a_dry_run_refuses_a_bomb_and_a_limit_past_the_cap(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    url = upstream.route("/bomb", lambda _r: gzipped(gzip_bomb()))

    bombed = await client.post(
        "/v1/tasks:validate", json=http_task(url, records_path="data"), headers=auth
    )
    too_large = await client.post(
        "/v1/tasks:validate",
        json={**http_task(url), "limits": {"max_response_bytes": 512 * MiB}},
        headers=auth,
    )

    assert bombed.status_code == 200, bombed.text
    assert bombed.json()["ok"] is False
    assert bombed.json()["error"]["code"] == "compression_ratio_exceeded"
    assert too_large.status_code == 422, too_large.text
    assert too_large.json()["errors"][0]["loc"] == ["body", "limits", "max_response_bytes"]
    assert len(upstream.hits("/bomb")) == 1  # the refused one asked nothing


async def test_a_dry_run_shares_the_api_process_budget(
    auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    """A page that alone would take more than the API's budget is refused, not held."""
    big = orjson.dumps({"data": make_records(30_000)})
    url = upstream.route("/big", lambda _r: Response(big, media_type="application/json"))
    small = settings.model_copy(update={"api_max_inflight_bytes": 2 * MiB})

    async with api_client(small) as client:
        response = await client.post(
            "/v1/tasks:validate", json=http_task(url, records_path="data"), headers=auth
        )

    assert response.status_code == 200, response.text
    assert response.json()["error"]["code"] == "response_too_large"
    assert "more than the 2 MiB this server lets" in response.json()["error"]["message"]


async def test_concurrent_runs_wait_for_room_in_the_workers_budget(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    """Four runs of pages that each take about a third of the worker's budget: all
    finish whole, and the worker never held more than its budget and one page."""
    records = make_records(1000)

    async def page(request: Any) -> Response:
        # Each answer takes a while, so the four runs overlap however fast the worker is
        # and however slowly the triggers arrive (without it, a loaded machine once ran
        # them one after the other, and the budget was never full).
        await asyncio.sleep(0.05)
        start = int(request.query_params.get("next_token") or 0)
        following = start + 250 if start + 250 < len(records) else None
        body = {"data": records[start : start + 250], "next_token": following}
        return Response(orjson.dumps(body), media_type="application/json")

    url = upstream.route("/pages", page)
    cursor = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}
    tasks = [
        await create_task(
            client, auth, http_task(url, f"t{i}", records_path="data", pagination=cursor)
        )
        for i in range(4)
    ]
    tight = settings.model_copy(update={"worker_max_inflight_bytes": MiB})

    async with running_worker(tight) as worker:
        runs = [await trigger(client, auth, task["id"]) for task in tasks]
        ended = [await wait_run(client, auth, run["id"]) for run in runs]
        bodies = _bodies(worker)

    assert [run["status"] for run in ended] == ["succeeded"] * 4, ended
    assert [run["stats"]["inserted"] for run in ended] == [1000] * 4
    assert bodies.used == 0
    assert MiB / 2 < bodies.peak <= MiB + 512 * 1024  # it was full, and no more than that
