"""Transactions behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from service.db import (
    create_engine,
    create_sessionmaker,
    locked_transaction,
    on_sqlite_thread,
    transaction,
)
from service.ids import new_id


@pytest.mark.parametrize(("ends_with", "rows_left"), [("rollback", 0), ("commit", 1)])
async def test_a_savepoint_shares_the_fate_of_its_transaction(
    clean_db: str, ends_with: str, rows_left: int
) -> None:
    """On SQLite a SAVEPOINT as the first write used to commit on RELEASE, whatever the
    transaction around it did afterwards."""
    engine = create_engine(clean_db)
    tenant = new_id("ten")
    try:
        async with create_sessionmaker(engine)() as session:
            await session.execute(text("SELECT 1"))
            async with session.begin_nested():
                await session.execute(
                    text(
                        "INSERT INTO tenant (id, name, created_at) "
                        "VALUES (:id, :id, CURRENT_TIMESTAMP)"
                    ),
                    {"id": tenant},
                )
            await getattr(session, ends_with)()
        async with engine.connect() as connection:
            found = await connection.execute(
                text("SELECT count(*) FROM tenant WHERE id = :id"), {"id": tenant}
            )
            assert found.scalar_one() == rows_left
    finally:
        await engine.dispose()


async def test_a_locked_transaction_reads_what_no_other_one_changes_before_it_commits(
    clean_db: str,
) -> None:
    """Two claimers read the same counter and write it + 1 (the scheduler's claim reads
    due rows, then writes them): in `locked_transaction`s neither update is lost, on
    SQLite (the write lock is taken before the read) as on PostgreSQL (`FOR UPDATE`)."""
    engine = create_engine(clean_db)
    sessionmaker = create_sessionmaker(engine)
    tenant = new_id("ten")
    read = text("SELECT name FROM tenant WHERE id = :id FOR UPDATE")
    if engine.dialect.name == "sqlite":
        read = text("SELECT name FROM tenant WHERE id = :id")  # SQLite has no FOR UPDATE
    write = text("UPDATE tenant SET name = :name WHERE id = :id")

    async def claim() -> None:
        async with locked_transaction(sessionmaker) as session:
            count = int((await session.execute(read, {"id": tenant})).scalar_one())
            await asyncio.sleep(0.2)  # the other claimer runs meanwhile
            await session.execute(write, {"id": tenant, "name": str(count + 1)})

    try:
        async with transaction(sessionmaker) as session:
            await session.execute(
                text(
                    "INSERT INTO tenant (id, name, created_at) VALUES (:id, '0', CURRENT_TIMESTAMP)"
                ),
                {"id": tenant},
            )
        await asyncio.gather(claim(), claim())
        async with engine.connect() as connection:
            name = await connection.execute(
                text("SELECT name FROM tenant WHERE id = :id"), {"id": tenant}
            )
            assert name.scalar_one() == "2"
    finally:
        await engine.dispose()


async def test_a_pooled_connection_dropped_while_idle_is_replaced_not_failed(
    clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only idle connections are pinged (`service.db._ping_if_idle`); one the server
    dropped meanwhile is replaced, as `pool_pre_ping` would."""
    if clean_db.startswith("sqlite"):
        pytest.skip("SQLite has no server that could drop a connection")
    monkeypatch.setattr("service.db.PING_IDLE_SECONDS", 0.1)
    engine = create_engine(clean_db, pool_size=1, max_overflow=0)
    admin = create_engine(clean_db)
    try:
        async with engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with admin.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await asyncio.sleep(0.2)
        async with engine.connect() as connection:
            again = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    finally:
        await engine.dispose()
        await admin.dispose()
    assert again != pid


async def test_work_on_sqlites_thread_is_in_the_sessions_transaction(tmp_path: Path) -> None:
    """`on_sqlite_thread` (the SQLite ledger's page write): its writes commit or roll
    back with the session, and a locked database raises SQLAlchemy's
    `OperationalError`, the error the runner retries, not the driver's own."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'thread.db'}"
    engine = create_engine(url)
    sessionmaker = create_sessionmaker(engine)

    def insert(value: int) -> Callable[[sqlite3.Connection], bool]:
        def work(connection: sqlite3.Connection) -> bool:
            connection.execute("INSERT INTO t (v) VALUES (?)", (value,))
            return connection.in_transaction

        return work

    async def fail_after_the_rows() -> None:
        async with transaction(sessionmaker) as session:
            await on_sqlite_thread(session, insert(2))
            raise RuntimeError("the page fails after its rows")

    try:
        async with transaction(sessionmaker) as session:
            await session.execute(text("CREATE TABLE t (v INTEGER)"))
        async with transaction(sessionmaker) as session:
            assert await on_sqlite_thread(session, insert(1)) is True
        with pytest.raises(RuntimeError):
            await fail_after_the_rows()
        async with sessionmaker() as session:
            values = (await session.execute(text("SELECT v FROM t"))).scalars().all()
        assert values == [1]

        other = sqlite3.connect(tmp_path / "thread.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:

            def locked(connection: sqlite3.Connection) -> None:
                connection.execute("PRAGMA busy_timeout = 50")
                connection.execute("INSERT INTO t (v) VALUES (3)")

            async def write_while_locked() -> None:
                async with transaction(sessionmaker) as session:
                    await on_sqlite_thread(session, locked)

            with pytest.raises(sqlalchemy.exc.OperationalError, match="locked"):
                await write_while_locked()
        finally:
            other.rollback()
            other.close()
    finally:
        await engine.dispose()
