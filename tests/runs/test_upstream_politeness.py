"""Retry-After is honoured, and a 429 holds back every task on that host."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sync import REQUEST_RETRY
from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, sync, trigger, wait_run


async def test_a_429_with_retry_after_is_waited_out_and_holds_the_host_for_other_tasks(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    seen: list[tuple[str, datetime]] = []
    limited = {"once": True}

    def handler(request: Request) -> Response:
        seen.append((request.url.path, datetime.now().astimezone()))
        if request.url.path == "/limited" and limited.pop("once", False):
            return JSONResponse(
                {"error": "slow down"}, status_code=429, headers={"Retry-After": "2"}
            )
        return JSONResponse([{"id": 1}])

    first_url = upstream.route("/limited", handler)
    other_url = upstream.route("/other", handler)
    retry = {"max_attempts": 3, "backoff": "linear", "initial_delay_seconds": 0.1}
    first = await create_task(client, auth, {**http_task(first_url, name="a"), "retry": retry})
    other = await create_task(client, auth, {**http_task(other_url, name="b"), "retry": retry})

    run = await trigger(client, auth, first["id"])
    while not seen:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # the worker has read the 429 and holds the host by now
    other_run = await sync(client, auth, other["id"])  # same host: must wait out the hold
    final = await wait_run(client, auth, run["id"])

    assert final["status"] == "succeeded"
    assert final["attempt"] == 1  # waited out in place: no attempt ended
    limited_at = seen[0][1]
    assert seen[0][0] == "/limited"
    later_requests = [at for _, at in seen[1:]]
    assert sorted(path for path, _ in seen[1:]) == ["/limited", "/other"]
    assert all(
        (at - limited_at).total_seconds() >= 1.9 for at in later_requests
    )  # nobody before it passed
    assert other_run["status"] == "succeeded"
    assert other_run["attempt"] == 1  # waiting for the host did not cost an attempt


async def test_a_retry_after_too_long_to_wait_in_place_delays_the_next_attempt(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    """Longer than the engine sleeps in place: the attempt ends at once, and the next one
    is scheduled after the Retry-After, not after the (shorter) backoff."""
    seconds = int(REQUEST_RETRY.max_in_place_wait) + 10
    url = upstream.route(
        "/later",
        lambda _r: JSONResponse({}, status_code=429, headers={"Retry-After": str(seconds)}),
    )
    retry = {"max_attempts": 3, "backoff": "linear", "initial_delay_seconds": 0.1}
    task = await create_task(client, auth, {**http_task(url), "retry": retry})

    run = await trigger(client, auth, task["id"])
    waiting = await wait_run(client, auth, run["id"], until={"retrying"})
    await client.post(f"/v1/runs/{run['id']}/cancel", headers=auth)

    failed_at = datetime.fromisoformat(waiting["attempts"][0]["finished_at"])
    delay = (datetime.fromisoformat(waiting["next_attempt_at"]) - failed_at).total_seconds()
    assert seconds - 1 <= delay <= seconds + 1
    assert waiting["error"]["http_status"] == 429
    assert len(upstream.hits("/later")) == 1
