"""A long sync against a flaky upstream: every record lands once, Retry-After is obeyed,
and only attempts that committed no page count toward `retry.max_attempts`.

A request failure is first tried again in place (`service.sync.request_retry`, up to
`TRIES` requests per page); only a page that fails that many times in a row ends an
attempt (`service.runs.runner._failed`)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.runs.runner import MAX_ATTEMPTS_FACTOR
from service.sync import REQUEST_RETRY
from tests.fixtures.upstream import Handler, Upstream, cursor, failing, make_records
from tests.helpers import create_task, feed, http_task, trigger, wait_run

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}
TRIES = REQUEST_RETRY.tries
"""Requests for one page before its failure ends the attempt."""
FAST_RETRY = {"backoff": "exponential", "initial_delay_seconds": 0.05, "max_delay_seconds": 0.2}


def busy() -> Response:
    return JSONResponse({"error": "busy"}, status_code=503)


# ---- 1. the acceptance test: 20% 5xx, a 429 every ninth request --------------------

BLOCK = 25
FAILING_IN_BLOCK = {6: 500, 7: 502, 8: 503, 9: 504, 20: 503}
"""Which requests of each block of `BLOCK` answer a 5xx (by their number in the
block, 1-based): 5 of 25, 20%. Requests 6 to 9 are a burst of four in a row — a page
asked for by the first of them fails all its `TRIES` tries in place, so an attempt
really ends there (if an earlier failure already used up some of its tries, the attempt
ends inside the burst and the next attempt's first request meets the rest of it);
request 20 is a lone blip, retried in place. Requests are numbered in arrival order: on
a first sync one page is fetched at a time (the next one while the previous one is
stored), so consecutive requests after a failure are that page's tries."""
LIMITED_EVERY = 9
"""Every ninth request, unless the block already makes it a 5xx, is a 429 with
`Retry-After: 1` (the 5xx wins, so the 5xx share stays exactly 20%)."""


def flaky_by_number(handler: Handler, limited_at: list[float]) -> Handler:
    """`handler`, but the n-th request (in arrival order) answers what the pattern above
    says; when a 429 is answered, its moment goes to `limited_at`."""
    number = 0

    async def wrapped(request: Request) -> Response:
        nonlocal number
        number += 1
        status = FAILING_IN_BLOCK.get((number - 1) % BLOCK + 1)
        if status is not None:
            return JSONResponse({"error": "flaky"}, status_code=status)
        if number % LIMITED_EVERY == 0:
            limited_at.append(time.monotonic())
            return JSONResponse(
                {"error": "slow down"}, status_code=429, headers={"Retry-After": "1"}
            )
        result = handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, Response)
        return result

    return wrapped


RETRY_AFTER_SLACK = 0.005
"""The far end of each Retry-After window is checked 5 ms short, never more: the
Redis hold is a key with a millisecond expiry (`PX`, read back with `PTTL`), so a
request may go up to about a millisecond before the exact second is up. Nothing is
given at the near end: `t` is when the upstream answered the 429, and the worker only
starts the hold once it has read that answer, later, so the real window starts after
`t` and ends after `t + 1`."""


async def test_a_long_sync_against_a_flaky_upstream_stores_every_record_once(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(2500)
    limited_at: list[float] = []
    url = upstream.route("/flaky", flaky_by_number(cursor(records, size=100), limited_at))
    body = {
        **http_task(url, records_path="data", pagination=CURSOR),
        "retry": {**FAST_RETRY, "max_attempts": 5},
    }
    task = await create_task(client, auth, body)

    run = await trigger(client, auth, task["id"])
    run = await wait_run(client, auth, run["id"], timeout=90)

    assert run["status"] == "succeeded", run
    assert run["attempt"] > 1, run["attempts"]  # the pattern did end attempts
    assert len(limited_at) >= 3  # ...and sent 429s
    items = await feed(client, auth, task["id"])
    assert Counter(item["key"] for item in items) == Counter(r["id"] for r in records)
    assert [(item["key"], item["data"]) for item in items] == [(r["id"], r) for r in records]
    assert run["stats"]["records_seen"] == 2500
    assert run["stats"]["inserted"] == 2500
    assert run["stats"]["pages"] == 25
    # nothing reached the host inside a Retry-After window (the whole upstream is one host)
    arrivals = [request.at for request in upstream.requests]
    for t in limited_at:
        early = [round(at - t, 4) for at in arrivals if t < at < t + 1 - RETRY_AFTER_SLACK]
        assert early == [], f"requests {early} s after a 429 with Retry-After: 1"
    assert run["stats"]["requests"] == len(upstream.hits("/flaky")), run["attempts"]


# ---- 2. which attempts count toward max_attempts --------------------------------------


async def test_attempts_that_committed_pages_do_not_count_toward_max_attempts(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    """Four pages of a long sync each fail `TRIES` times in a row (the attempt ends
    there), each after pages that committed: five attempts for a `max_attempts` of 2."""
    records = make_records(100)
    points = {"20", "40", "60", "80"}

    def fails(request: Request, before: int) -> Response | None:
        token = request.query_params.get("next_token", "")
        return busy() if token in points and before < TRIES else None

    url = upstream.route("/stuttering", failing(cursor(records, size=10), fails))
    body = {
        **http_task(url, records_path="data", pagination=CURSOR),
        "retry": {**FAST_RETRY, "max_attempts": 2},
    }
    task = await create_task(client, auth, body)

    run = await trigger(client, auth, task["id"])
    run = await wait_run(client, auth, run["id"])

    assert run["status"] == "succeeded", run
    assert run["attempt"] == 5
    attempts = run["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4, 5]
    assert [a["pages"] for a in attempts[:-1]] == [2, 2, 2, 2]  # each failed one after 2
    assert [a["counted"] for a in attempts] == [False] * 5
    assert [a["error"] and a["error"]["http_status"] for a in attempts] == [503] * 4 + [None]
    assert run["error"] is None
    assert [item["data"] for item in await feed(client, auth, task["id"])] == records
    assert run["stats"]["pages"] == 10
    assert run["stats"]["inserted"] == 100


async def test_the_successful_attempt_counts_every_page_it_committed(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(30)
    url = upstream.route("/calm", cursor(records, size=10))
    body = {**http_task(url, records_path="data", pagination=CURSOR), "retry": FAST_RETRY}
    task = await create_task(client, auth, body)

    run = await trigger(client, auth, task["id"])
    run = await wait_run(client, auth, run["id"])

    assert run["status"] == "succeeded"
    assert run["stats"]["pages"] == 3
    assert [(a["pages"], a["counted"]) for a in run["attempts"]] == [(3, False)]


async def test_a_first_page_that_always_fails_fails_the_run_after_max_attempts(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(30)
    url = upstream.route(
        "/broken", failing(cursor(records, size=10), lambda request, _before: busy())
    )
    body = {
        **http_task(url, records_path="data", pagination=CURSOR),
        "retry": {**FAST_RETRY, "max_attempts": 3},
    }
    task = await create_task(client, auth, body)

    run = await trigger(client, auth, task["id"])
    run = await wait_run(client, auth, run["id"])

    assert run["status"] == "failed"
    assert run["attempt"] == 3
    assert [(a["pages"], a["counted"]) for a in run["attempts"]] == [(0, True)] * 3
    assert run["error"]["http_status"] == 503
    assert len(upstream.hits("/broken")) == 3 * TRIES


async def test_after_progress_only_the_attempts_stuck_on_one_page_count(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    """The first attempt commits pages, then the third page fails for good: that attempt
    is free, the ones stuck on the page are not."""
    records = make_records(50)

    def fails(request: Request, _before: int) -> Response | None:
        return busy() if request.query_params.get("next_token") == "20" else None

    url = upstream.route("/stuck", failing(cursor(records, size=10), fails))
    body = {
        **http_task(url, records_path="data", pagination=CURSOR),
        "retry": {**FAST_RETRY, "max_attempts": 2},
    }
    task = await create_task(client, auth, body)

    run = await trigger(client, auth, task["id"])
    run = await wait_run(client, auth, run["id"])

    assert run["status"] == "failed"
    assert run["attempt"] == 3
    assert [(a["pages"], a["counted"]) for a in run["attempts"]] == [
        (2, False),
        (0, True),
        (0, True),
    ]
    assert [item["data"] for item in await feed(client, auth, task["id"])] == records[:20]


async def test_attempts_that_keep_making_progress_are_still_capped(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    """Every page but the first fails `TRIES` times before it answers: each attempt
    commits one page (the one the attempt before failed on) and ends on the next. None
    counts, so only `MAX_ATTEMPTS_FACTOR` times `max_attempts` attempts in all end the run."""
    records = make_records(30)

    def fails(request: Request, before: int) -> Response | None:
        first = "next_token" not in request.query_params
        return busy() if not first and before < TRIES else None

    url = upstream.route("/crawling", failing(cursor(records, size=1), fails))
    body = {
        **http_task(url, records_path="data", pagination=CURSOR),
        "retry": {**FAST_RETRY, "max_attempts": 1},
    }
    task = await create_task(client, auth, body)

    run = await trigger(client, auth, task["id"])
    run = await wait_run(client, auth, run["id"])

    cap = MAX_ATTEMPTS_FACTOR
    assert run["status"] == "failed"
    assert run["attempt"] == cap
    assert [(a["pages"], a["counted"]) for a in run["attempts"]] == [(1, False)] * cap
    assert [item["data"] for item in await feed(client, auth, task["id"])] == records[:cap]


# ---- 3. a Retry-After too long to sleep in place, in the middle of a sync ---------------


async def test_a_long_retry_after_mid_sync_ends_the_attempt_until_it_passes(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    seconds = int(REQUEST_RETRY.max_in_place_wait) + 15
    records = make_records(50)
    limited = JSONResponse({}, status_code=429, headers={"Retry-After": str(seconds)})

    def fails(request: Request, before: int) -> Response | None:
        return limited if request.query_params.get("next_token") == "20" and not before else None

    url = upstream.route("/patience", failing(cursor(records, size=10), fails))
    body = {
        **http_task(url, records_path="data", pagination=CURSOR),
        # Retry-After is obeyed up to the task's longest delay (beyond it: test_hostile_inputs)
        "retry": {**FAST_RETRY, "max_attempts": 3, "max_delay_seconds": 120},
    }
    task = await create_task(client, auth, body)

    run = await trigger(client, auth, task["id"])
    waiting = await wait_run(client, auth, run["id"], until={"retrying"})
    await client.post(f"/v1/runs/{run['id']}/cancel", headers=auth)

    assert waiting["attempt"] == 2  # the one to come
    [ended] = waiting["attempts"]
    assert (ended["pages"], ended["counted"]) == (2, False)
    assert ended["error"]["http_status"] == 429
    failed_at = datetime.fromisoformat(ended["finished_at"])
    delay = (datetime.fromisoformat(waiting["next_attempt_at"]) - failed_at).total_seconds()
    assert seconds <= delay <= seconds + 1  # not the backoff's 0.2 s at most
    asked = [seen.query.get("next_token", "") for seen in upstream.hits("/patience")]
    assert asked == ["", "10", "20"]  # not tried again in place
