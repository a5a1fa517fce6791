"""`GET /v1/events` with a real worker, Redis, database and upstream: what a run's end
writes, how a client reads it, and how long it is kept."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import col
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.config import Settings
from service.db import SessionMaker, create_engine, create_sessionmaker, transaction
from service.models import Event, Tenant
from service.models.types import utcnow
from service.notifications import repository
from service.notifications.outbox import NewEvent, append
from service.notifications.service import prune_once
from tests.fixtures.app import MakeKey, running_worker
from tests.fixtures.upstream import Upstream, make_records
from tests.helpers import create_task, feed, http_task, sync

EVERY_HOUR = {"every_seconds": 3600}


async def read_events(
    client: httpx.AsyncClient, auth: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every event the filters select, following `next_after` a page of two at a time."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        response = await client.get(
            "/v1/events", params={**params, "after": after, "limit": 2}, headers=auth
        )
        assert response.status_code == 200, response.text
        body = response.json()
        found.extend(body["items"])
        if not body["items"]:
            assert body["next_after"] == after
            return found
        after = body["next_after"]


@pytest.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[SessionMaker]:
    engine = create_engine(settings.database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


class Switch:
    """An upstream that answers `status` until told otherwise, then two records."""

    def __init__(self, status: int) -> None:
        self.status = status

    def __call__(self, _request: Request) -> Response:
        if self.status != 200:
            return JSONResponse({"error": "no"}, status_code=self.status)
        return JSONResponse(make_records(2))


async def test_a_run_that_wrote_records_tells_the_feed_where_they_are(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/three", lambda _r: JSONResponse(make_records(3)))
    task = await create_task(client, auth, {**http_task(url), "user_id": "u_42"})
    run = await sync(client, auth, task["id"])

    found = await read_events(client, auth)
    assert [event["type"] for event in found] == ["run.succeeded", "records.changed"]
    succeeded, changed = found
    assert succeeded["data"]["run_id"] == run["id"]
    assert succeeded["data"]["stats"]["inserted"] == 3
    assert succeeded["id"].startswith("evt_") and succeeded["timestamp"]
    records = await feed(client, auth, task["id"])
    assert changed["data"] == {
        "task_id": task["id"],
        "user_id": "u_42",
        "run_id": run["id"],
        "inserted": 3,
        "updated": 0,
        "deleted": 0,
        "next_after": records[-1]["seq"],
    }
    assert await feed(client, auth, task["id"], after=changed["data"]["next_after"]) == []

    await sync(client, auth, task["id"])  # nothing changed: no records.changed
    assert [e["type"] for e in await read_events(client, auth)][2:] == ["run.succeeded"]


async def test_the_feed_filters_by_type_task_and_user_and_pages_exactly(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_key: MakeKey,
    upstream: Upstream,
    worker: object,
) -> None:
    ok = upstream.route("/ok", lambda _r: JSONResponse(make_records(1)))
    gone = upstream.route("/gone", lambda _r: JSONResponse({}, status_code=404))
    first = await create_task(client, auth, {**http_task(ok, "a"), "user_id": "u_1"})
    second = await create_task(client, auth, {**http_task(gone, "b"), "user_id": "u_2"})
    for task in (first, second, first):
        await sync(client, auth, task["id"])

    everything = await read_events(client, auth)
    assert [e["seq"] for e in everything] == [1, 2, 3, 4]
    kinds = ["run.succeeded", "records.changed", "run.failed", "run.succeeded"]
    assert [e["type"] for e in everything] == kinds  # the resync changed nothing
    by_type = await read_events(client, auth, type="run.failed,records.changed")
    assert [e["seq"] for e in by_type] == [2, 3]
    repeated = await client.get("/v1/events?type=run.failed&type=run.succeeded", headers=auth)
    assert {e["type"] for e in repeated.json()["items"]} == {"run.failed", "run.succeeded"}
    assert {
        e["data"]["task_id"] for e in await read_events(client, auth, task_id=second["id"])
    } == {second["id"]}
    assert {e["data"]["user_id"] for e in await read_events(client, auth, user_id="u_1")} == {"u_1"}

    other = await make_key("globex")
    assert await read_events(client, other) == []
    bad = await client.get("/v1/events?type=run.exploded", headers=auth)
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "run.exploded" in bad.text


async def test_failures_in_a_row_pause_a_scheduled_task_and_a_success_recovers_it(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    switch = Switch(404)
    url = upstream.route("/switch", switch)
    body = {**http_task(url), "schedule": EVERY_HOUR, "retry": {"max_attempts": 1}}
    task = await create_task(client, auth, body)
    assert task["next_run_at"] is not None

    async with running_worker(settings.model_copy(update={"auto_pause_after_failures": 2})):
        for _ in range(2):
            assert (await sync(client, auth, task["id"]))["status"] == "failed"
        paused = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
        assert (paused["state"], paused["paused_reason"]) == ("paused", "consecutive_failures")
        assert paused["next_run_at"] is None and paused["consecutive_failures"] == 2
        events = await read_events(client, auth, type="task.paused")
        assert [e["data"]["consecutive_failures"] for e in events] == [2]
        assert events[0]["data"]["error"]["http_status"] == 404

        resumed = await client.patch(
            f"/v1/tasks/{task['id']}", json={"paused": False}, headers=auth
        )
        assert resumed.json()["paused_reason"] is None
        assert resumed.json()["next_run_at"] is not None
        switch.status = 200
        assert (await sync(client, auth, task["id"]))["status"] == "succeeded"

    recovered = await read_events(client, auth, type="task.recovered")
    assert [e["data"]["failures"] for e in recovered] == [2]
    task_now = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert task_now["consecutive_failures"] == 0


async def test_pausing_through_the_api_says_client_and_emits_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    task = await create_task(client, auth, http_task(upstream.route("/x", Switch(200))))
    patched = await client.patch(f"/v1/tasks/{task['id']}", json={"paused": True}, headers=auth)
    assert (patched.json()["state"], patched.json()["paused_reason"]) == ("paused", "client")
    assert await read_events(client, auth) == []


async def test_refused_credentials_are_reported_once_until_they_change(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/private", Switch(401))
    body = {**http_task(url, auth={"type": "bearer", "token": "old-token"}), "user_id": "u_9"}
    task = await create_task(client, auth, body)
    for _ in range(2):
        assert (await sync(client, auth, task["id"]))["status"] == "failed"

    refused = await read_events(client, auth, type="task.auth_failed")
    assert [(e["data"]["user_id"], e["data"]["http_status"]) for e in refused] == [("u_9", 401)]
    shown = (await client.get(f"/v1/tasks/{task['id']}", headers=auth)).json()
    assert shown["auth_failed_at"] is not None
    assert "old-token" not in str(refused)

    new_auth = {"source": {"auth": {"type": "bearer", "token": "new-token"}}}
    patched = await client.patch(f"/v1/tasks/{task['id']}", json=new_auth, headers=auth)
    assert patched.json()["auth_failed_at"] is None
    await sync(client, auth, task["id"])  # the new token is refused too: news again
    assert len(await read_events(client, auth, type="task.auth_failed")) == 2


async def test_events_older_than_the_retention_are_pruned(
    sessionmaker: SessionMaker,
) -> None:
    now = utcnow()
    async with transaction(sessionmaker) as session:
        session.add(Tenant(id="ten_p", name="prune"))
        await session.flush()
        await append(session, "ten_p", [NewEvent("run.failed", {"n": 1})], now - timedelta(days=31))
        await append(session, "ten_p", [NewEvent("run.failed", {"n": 2})], now - timedelta(days=29))

    assert await prune_once(sessionmaker, retention_days=30) == 1

    async with sessionmaker() as session:
        left = (await session.execute(select(col(Event.data)))).scalars().all()
    assert left == [{"n": 2}]


async def test_a_reader_never_misses_an_event_committed_after_a_later_seq(
    sessionmaker: SessionMaker,
) -> None:
    """Writers reserve seqs and commit in random order of delays; a reader that keeps
    following its cursor meanwhile still ends up with every event exactly once."""
    async with transaction(sessionmaker) as session:
        session.add(Tenant(id="ten_c", name="concurrent"))
    written = 40

    async def writer(n: int) -> None:
        async with transaction(sessionmaker) as session:
            await append(session, "ten_c", [NewEvent("run.succeeded", {"n": n})])
            await asyncio.sleep(random.uniform(0, 0.02))  # hold the commit back a little

    seen: list[int] = []
    after = 0

    async def read_once() -> None:
        nonlocal after
        async with sessionmaker() as session:
            page = await repository.page(
                session, "ten_c", after=after, types=[], task_id=None, user_id=None, limit=7
            )
        seen.extend(event.data["n"] for event in page)
        if page:
            after = page[-1].seq

    writers = asyncio.gather(*(writer(n) for n in range(written)))
    while not writers.done():
        await read_once()
        await asyncio.sleep(0.001)
    await writers
    for _ in range(written):
        await read_once()
    assert sorted(seen) == list(range(written))  # none missed, none twice
