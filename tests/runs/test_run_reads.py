"""A run is shown the same whichever way it was read: straight on the driver
(`QuickStatements` on PostgreSQL), through Core (SQLite), or from the ORM object."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import (
    QuickStatements,
    create_engine,
    create_sessionmaker,
    reading,
    transaction,
)
from service.runs import service
from tests.helpers import create_task, http_task

ERROR = {"code": "upstream_status", "message": "HTTP 503 from upstream", "retryable": True}
ATTEMPTS = [{"attempt": 1, "error": ERROR, "ended_at": "2026-12-04T10:00:03Z"}]


async def test_a_run_read_on_the_hot_path_is_the_run_the_orm_shows(
    client: httpx.AsyncClient, auth: dict[str, str], clean_db: str
) -> None:
    task = await create_task(client, auth, http_task("http://127.0.0.1:9/x"))
    run = (await client.post(f"/v1/tasks/{task['id']}/runs", headers=auth)).json()
    engine = create_engine(clean_db)
    quick = QuickStatements(reading(engine), 2)
    await quick.start()
    tenant = await _tenant_of(engine, task["id"])
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            stored = await service.get_run(session, tenant, run["id"])
            stored.status, stored.attempt, stored.error = "retrying", 2, ERROR
            stored.attempts = ATTEMPTS
            stored.started_at = datetime(2026, 12, 4, 10, 0, 1, 250000, tzinfo=UTC)
            stored.next_attempt_at = datetime(2026, 12, 4, 10, 0, 9, tzinfo=UTC)
            stored.records_seen, stored.bytes, stored.waiting_reason = 2**40, 12345, None
        async with create_sessionmaker(engine)() as session:
            shown = service.to_out(await service.get_run(session, tenant, run["id"]))
        read = await service.read_run(quick, tenant, run["id"])
        triggered, created = await service.trigger(quick, tenant, task["id"])
    finally:
        await quick.close()
        await engine.dispose()

    assert quick.on_driver == clean_db.startswith("postgresql")
    assert read == shown
    assert read.error is not None and read.error.code == "upstream_status"
    assert read.attempts == ATTEMPTS
    assert read.started_at == datetime(2026, 12, 4, 10, 0, 1, 250000, tzinfo=UTC)
    assert read.stats.records_seen == 2**40
    assert (triggered, created) == (shown, False)  # the active run, as GET shows it


async def test_a_quick_read_survives_its_connection_dying_while_idle(
    client: httpx.AsyncClient, auth: dict[str, str], clean_db: str
) -> None:
    """A database restart, or a connection dropped by a proxy: the read goes once more,
    on a new connection, as the SQLAlchemy pool's ping would have it."""
    if not clean_db.startswith("postgresql"):
        pytest.skip("SQLite has no connection to lose")
    task = await create_task(client, auth, http_task("http://127.0.0.1:9/x"))
    run = (await client.post(f"/v1/tasks/{task['id']}/runs", headers=auth)).json()
    engine = create_engine(clean_db)
    quick = QuickStatements(reading(engine), 1)
    await quick.start()
    tenant = await _tenant_of(engine, task["id"])
    try:
        found = await quick.first(select(func.pg_backend_pid().label("pid")), {})
        assert found is not None
        # Killed from another thread while this event loop is blocked: the pool cannot
        # have noticed by the time the read takes the connection again.
        killer = threading.Thread(target=asyncio.run, args=(_terminate(clean_db, found["pid"]),))
        killer.start()
        killer.join()
        read = await service.read_run(quick, tenant, run["id"])
        again = await quick.first(select(func.pg_backend_pid().label("pid")), {})
    finally:
        await quick.close()
        await engine.dispose()
    assert read.id == run["id"]
    assert again is not None and again["pid"] != found["pid"]


async def _terminate(database_url: str, pid: int) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            killed = await connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
            )
            assert killed.scalar_one() is True
            await connection.commit()
        await asyncio.sleep(0.2)  # the backend is gone, its goodbye sent
    finally:
        await engine.dispose()


async def _tenant_of(engine: AsyncEngine, task_id: str) -> str:
    async with engine.connect() as connection:
        found = await connection.execute(
            text("SELECT tenant_id FROM task WHERE id = :id"), {"id": task_id}
        )
        return str(found.scalar_one())


async def test_quick_statements_take_turns_on_their_few_connections(clean_db: str) -> None:
    """50 statements at once on 2 connections: each waits its turn, none fails, no third
    connection is opened; and a statement cancelled midway leaves no connection busy."""
    if not clean_db.startswith("postgresql"):
        pytest.skip("SQLite statements run through SQLAlchemy")
    engine = create_engine(clean_db)
    quick = QuickStatements(reading(engine), 2)
    await quick.start()
    pid = select(func.pg_backend_pid().label("pid"))
    try:
        rows = await asyncio.gather(*(quick.first(pid, {}) for _ in range(50)))
        slow = asyncio.create_task(quick.first(select(func.pg_sleep(30).label("slept")), {}))
        other = asyncio.create_task(quick.first(select(func.pg_sleep(30).label("slept")), {}))
        await asyncio.sleep(0.3)
        slow.cancel()
        other.cancel()
        await asyncio.gather(slow, other, return_exceptions=True)
        after = await asyncio.gather(*(quick.first(pid, {}) for _ in range(10)))
    finally:
        await quick.close()
        await engine.dispose()
    pids = {row["pid"] for row in rows if row is not None}
    assert len(rows) == 50 and len(pids) <= 2
    assert len({row["pid"] for row in after if row is not None}) <= 2
    assert not pids & {row["pid"] for row in after if row is not None}  # both replaced
