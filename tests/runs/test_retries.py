"""Retryable failures become further attempts of the same run, resuming at its checkpoint.

A failure ends an attempt only once the engine has tried the request in place
(`service.sync.request_retry`): the upstreams here fail `TRIES` times in a row for that."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.sync import REQUEST_RETRY
from tests.fixtures.upstream import Upstream, cursor, make_records
from tests.helpers import create_task, feed, http_task, sync, trigger, wait_run

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}
TRIES = REQUEST_RETRY.tries
"""Requests for one page before its failure ends the attempt."""
FAST_RETRY = {
    "max_attempts": 4,
    "backoff": "linear",
    "initial_delay_seconds": 0.05,
    "max_delay_seconds": 1,
}


def failing_first(handler: Any, failures: dict[str, int], status: int = 503) -> Any:
    """Answer `status` the first N times a given `next_token` is asked for."""

    def wrapped(request: Request) -> Response:
        token = request.query_params.get("next_token", "")
        if failures.get(token, 0) > 0:
            failures[token] -= 1
            return JSONResponse({"error": "busy"}, status_code=status)
        result: Response = handler(request)
        return result

    return wrapped


async def test_a_flaky_page_is_retried_and_the_run_resumes_at_its_checkpoint(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(50)
    url = upstream.route("/flaky", failing_first(cursor(records, size=10), {"20": 2 * TRIES}))
    body = {**http_task(url, records_path="data", pagination=CURSOR), "retry": FAST_RETRY}
    task = await create_task(client, auth, body)

    run = await sync(client, auth, task["id"])

    assert run["status"] == "succeeded", run
    assert run["attempt"] == 3
    assert [a["attempt"] for a in run["attempts"]] == [1, 2, 3]
    assert [a["error"]["http_status"] if a["error"] else None for a in run["attempts"]] == [
        503,
        503,
        None,
    ]
    asked = [seen.query.get("next_token", "") for seen in upstream.hits("/flaky")]
    # pages before the failure: once
    assert asked == ["", "10", *["20"] * (2 * TRIES + 1), "30", "40"]
    assert run["error"] is None
    assert [item["data"] for item in await feed(client, auth, task["id"])] == records
    assert run["stats"]["inserted"] == 50


async def test_retries_run_out_and_the_run_fails_with_the_last_error(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/down", lambda _r: JSONResponse({}, status_code=502))
    body = {**http_task(url), "retry": {**FAST_RETRY, "max_attempts": 3}}
    task = await create_task(client, auth, body)

    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed"
    assert run["attempt"] == 3
    assert len(run["attempts"]) == 3
    assert run["error"]["http_status"] == 502
    assert run["error"]["retryable"] is True
    assert len(upstream.hits("/down")) == 3 * TRIES


async def test_while_waiting_the_run_is_retrying_with_next_attempt_at(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    failures = {"": TRIES}
    url = upstream.route("/later", failing_first(lambda _r: JSONResponse([{"id": 1}]), failures))
    body = {
        **http_task(url),
        "retry": {"max_attempts": 2, "backoff": "linear", "initial_delay_seconds": 1},
    }
    task = await create_task(client, auth, body)

    run = await trigger(client, auth, task["id"])
    waiting = await wait_run(client, auth, run["id"], until={"retrying"})
    assert waiting["next_attempt_at"] is not None
    failed_at = datetime.fromisoformat(waiting["attempts"][0]["finished_at"])
    delay = (datetime.fromisoformat(waiting["next_attempt_at"]) - failed_at).total_seconds()
    assert 0.9 <= delay <= 1.5  # linear: 1 s after the first failure
    again = await client.post(f"/v1/tasks/{task['id']}/runs", headers=auth)
    assert again.status_code == 200 and again.json()["id"] == run["id"]  # still the active run

    final = await wait_run(client, auth, run["id"])
    assert final["status"] == "succeeded"
    assert final["next_attempt_at"] is None


async def test_cancelling_a_retrying_run_ends_it_at_once(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/503", lambda _r: JSONResponse({}, status_code=503))
    body = {
        **http_task(url),
        "retry": {"max_attempts": 5, "backoff": "linear", "initial_delay_seconds": 30},
    }
    task = await create_task(client, auth, body)
    run = await trigger(client, auth, task["id"])
    await wait_run(client, auth, run["id"], until={"retrying"})

    cancelled = await client.post(f"/v1/runs/{run['id']}/cancel", headers=auth)

    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["next_attempt_at"] is None
    assert len(upstream.hits("/503")) == TRIES


async def test_a_retry_after_unchanged_pages_resumes_after_them(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    """Pages that write nothing commit their progress in batches; a failure still keeps
    what the pages before it established, so the retry does not fetch them again."""
    records = make_records(100)
    failures: dict[str, int] = {}
    url = upstream.route("/quiet", failing_first(cursor(records, size=10), failures))
    body = {**http_task(url, records_path="data", pagination=CURSOR), "retry": FAST_RETRY}
    task = await create_task(client, auth, body)
    await sync(client, auth, task["id"])
    failures["80"] = TRIES
    before = len(upstream.hits("/quiet"))

    run = await sync(client, auth, task["id"])

    assert run["status"] == "succeeded"
    assert run["attempt"] == 2
    assert run["stats"]["unchanged"] == 100
    assert run["stats"]["pages"] == 10
    asked = Counter(seen.query.get("next_token", "") for seen in upstream.hits("/quiet")[before:])
    assert all(asked[token] == 1 for token in ["", "10", "20", "30", "40", "50", "60", "70"])
    assert asked["80"] == TRIES + 1  # failed, then fetched again by the retry, and only it
    # 90 once by the retry, and perhaps once before: fetched ahead while 80 failed
    assert asked["90"] in (1, 2)
    assert run["stats"]["requests"] >= 10
