"""Only the lease holder writes: a worker whose run was taken over stores nothing more."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from sqlalchemy import bindparam, text

from service.config import Settings
from service.db import create_engine
from service.models.types import UTCDateTime, utcnow
from tests.fixtures.upstream import Upstream, cursor, make_records, slowly
from tests.helpers import create_task, http_task, trigger, wait_run

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}

_STEAL = text(
    "UPDATE run SET lease_owner = 'elsewhere', lease_expires_at = :until "
    "WHERE id = :id AND status = 'running' RETURNING pages"
).bindparams(bindparam("until", type_=UTCDateTime()))


async def test_a_worker_that_lost_its_lease_writes_no_further_page(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    settings: Settings,
    worker: object,
) -> None:
    url = upstream.route("/fenced", slowly(cursor(make_records(200), size=10), 0.05))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    run = await trigger(client, auth, task["id"])
    await wait_run(client, auth, run["id"], until={"running"}, timeout=30)

    engine = create_engine(settings.database_url)
    try:
        while True:  # take the run over once a few pages are in
            async with engine.connect() as connection:
                pages = (
                    await connection.execute(
                        text("SELECT pages FROM run WHERE id = :id"), {"id": run["id"]}
                    )
                ).scalar_one()
            if pages >= 3:
                break
            await asyncio.sleep(0.02)
        async with engine.begin() as connection:
            until = utcnow() + timedelta(hours=1)
            stolen_at = (
                await connection.execute(_STEAL, {"id": run["id"], "until": until})
            ).scalar_one()
        await asyncio.sleep(1.0)  # ~20 more pages' time: the old holder must have noticed

        async with engine.connect() as connection:
            stored = (
                await connection.execute(
                    text("SELECT count(*) FROM record WHERE task_id = :id"), {"id": task["id"]}
                )
            ).scalar_one()
            row = (
                await connection.execute(
                    text("SELECT status, pages, lease_owner FROM run WHERE id = :id"),
                    {"id": run["id"]},
                )
            ).one()
    finally:
        await engine.dispose()

    assert 3 <= stolen_at < 20
    # Records and progress commit together: exactly the pages counted before the steal.
    assert stored == stolen_at * 10
    assert tuple(row) == ("running", stolen_at, "elsewhere")
    # The old holder stopped: at most the page in flight and the one read ahead after it.
    assert len(upstream.hits("/fenced")) <= stolen_at + 2
