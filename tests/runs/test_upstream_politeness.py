"""Retry-After is honoured, and a 429 holds back every task on that host."""

from __future__ import annotations

from datetime import datetime

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, sync, trigger, wait_run


async def test_a_429_with_retry_after_delays_the_retry_and_holds_the_host_for_other_tasks(
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
    waiting = await wait_run(client, auth, run["id"], until={"retrying"})
    other_run = await sync(client, auth, other["id"])  # same host: must wait out the hold
    final = await wait_run(client, auth, run["id"])

    assert final["status"] == "succeeded"
    assert waiting["error"]["http_status"] == 429
    limited_at = seen[0][1]
    assert seen[0][0] == "/limited"
    later_requests = [at for _, at in seen[1:]]
    assert all(
        (at - limited_at).total_seconds() >= 1.9 for at in later_requests
    )  # nobody before it passed
    assert other_run["status"] == "succeeded"
    assert other_run["attempt"] == 1  # waiting for the host did not cost an attempt
