"""Engine and session factories.

SQLite runs in WAL mode with a busy timeout so the API and the worker (separate
processes) can both write; foreign keys are switched on so deletes cascade.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from sqlalchemy import BindParameter, ColumnElement, bindparam, event
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

SessionMaker = async_sessionmaker[AsyncSession]


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json_loads(value: Any) -> Any:
    """SQLite's numeric affinity hands a JSON scalar like `10` back as a number."""
    return value if isinstance(value, int | float) else orjson.loads(value)


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_savepoint_in_transaction(connection: Connection, _name: str) -> None:
    """Open a real transaction before a SAVEPOINT that would otherwise start one.

    The sqlite3 driver begins transactions only before INSERT/UPDATE/DELETE, so a
    SAVEPOINT issued first starts SQLite's own transaction, and its RELEASE commits
    everything at once: a later rollback of the session would not undo it. IMMEDIATE,
    because a savepoint is only ever taken to write.
    """
    _begin_immediate(connection)


def _sqlite_begin(connection: Connection) -> None:
    """A `locked_transaction` takes SQLite's write lock before its first statement."""
    if connection.get_execution_options().get(_WRITE_LOCK):
        _begin_immediate(connection)


def _begin_immediate(connection: Connection) -> None:
    driver = connection.connection.driver_connection
    if driver is not None and not getattr(driver, "in_transaction", True):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_WRITE_LOCK = "backsync_write_lock"

PING_IDLE_SECONDS = 1.0
"""A pooled connection unused for longer than this is pinged before it is handed out."""


def _note_checkin(_dbapi: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(engine: AsyncEngine) -> Callable[..., None]:
    """SQLAlchemy's `pool_pre_ping`, but only for a connection that sat idle.

    Why: the asyncpg dialect pings as BEGIN, `;`, ROLLBACK, three round trips on
    every checkout: on a `GET /v1/runs/{id}` that was more than the read itself
    (bench/api.py). A connection that went stale (a database restart, a dropped idle
    connection) did so while unused, so one handed out again within a second of its
    last use is trusted; a failed ping makes the pool open a fresh one
    (and drops the others opened before), as pre-ping does.
    """
    dialect = engine.dialect

    def checkout(dbapi: DBAPIConnection, record: ConnectionPoolEntry, _proxy: object) -> None:
        since = record.info.get("checked_in_at")
        if since is None or time.monotonic() - since <= PING_IDLE_SECONDS:
            return
        try:
            alive = dialect.do_ping(dbapi)
        except Exception as exc:
            raise InvalidatePoolError("a pooled connection failed its ping") from exc
        if not alive:
            raise InvalidatePoolError("a pooled connection failed its ping")

    return checkout


def create_engine(
    database_url: str, *, pool_size: int = 10, max_overflow: int = 10, pre_ping: bool = True
) -> AsyncEngine:
    """`pre_ping=False` saves a round trip per checkout where a failed statement is
    retried anyway (the worker: a page on a dead connection fails, the attempt retries);
    with it, only connections idle for a while are pinged (`_ping_if_idle`)."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(
            database_url, json_serializer=_json_dumps, json_deserializer=_json_loads
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "savepoint", _sqlite_savepoint_in_transaction)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        json_serializer=_json_dumps,
        json_deserializer=_json_loads,
    )
    if pre_ping:
        event.listen(engine.sync_engine.pool, "checkin", _note_checkin)
        event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle(engine))
    return engine


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def reading(engine: AsyncEngine) -> AsyncEngine:
    """`engine` for requests that only read, on the same pool: every statement commits
    on its own, so a read of one statement is one round trip, not BEGIN, the read and
    COMMIT (bench/api.py). Never for writes, nor for reads that must agree with each
    other (two statements may see two different commits)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


@asynccontextmanager
async def transaction(sessionmaker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """The unit of work for jobs and the CLI: commit on success, roll back on error."""
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


@asynccontextmanager
async def locked_transaction(sessionmaker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """`transaction`, for reading rows in order to change them: on SQLite it holds the
    database's write lock from its first statement (BEGIN IMMEDIATE), as a PostgreSQL
    `SELECT ... FOR UPDATE` holds the rows it reads. One such reader at a time on
    SQLite; on PostgreSQL the option means nothing (its statements lock rows)."""
    async with transaction(sessionmaker) as session:
        await session.connection(execution_options={_WRITE_LOCK: True})
        yield session


@asynccontextmanager
async def autocommit(sessionmaker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """A session whose statements each commit on their own: for work that is one
    statement (atomic by itself), it saves the BEGIN and COMMIT round trips."""
    async with sessionmaker() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


def values_rows(
    columns: Sequence[ColumnElement[Any]], rows: int, per_row: Collection[str]
) -> tuple[str, list[BindParameter[Any]]]:
    """`(:a_0, :b, ...), (:a_1, :b, ...)`: a multi-row VALUES list that PostgreSQL and
    SQLite both read, and its typed binds. Columns named in `per_row` get a bind per row
    (`:name_<row>`), the others one bind shared by every row (`:name`).

    With the binds typed, the asyncpg dialect casts each (`$1::TIMESTAMP WITH TIME
    ZONE`), so PostgreSQL knows the VALUES columns' types even outside an INSERT; SQLite
    needs no cast. One statement for a whole batch, the same SQL on both databases.
    """
    names = [column.key for column in columns]
    listed = [
        ", ".join(f":{name}_{row}" if name in per_row else f":{name}" for name in names)
        for row in range(rows)
    ]
    binds = [bindparam(c.key, type_=c.type) for c in columns if c.key not in per_row]
    binds += [
        bindparam(f"{c.key}_{row}", type_=c.type)
        for row in range(rows)
        for c in columns
        if c.key in per_row
    ]
    return ", ".join(f"({row})" for row in listed), binds


_T = TypeVar("_T")


async def on_sqlite_thread(session: AsyncSession, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """SQLite only: `work(connection)` on the session's own `sqlite3` connection, in the
    session's transaction, run on the thread aiosqlite runs that connection on: one hop
    between the event loop and that thread, where each statement through the session
    costs four (cursor, execute, fetch, close) and SQLAlchemy's compilation and
    processing of every parameter on the event loop's thread. While `work` runs inside
    SQLite the GIL is free, so the event loop decodes the next page meanwhile
    (bench/ingest.py, SQLite first sync: see `runs.ledger.sqlite`).

    aiosqlite has no public way to run a function on its thread; `_execute` is the
    one it uses for every call of its own (pinned in requirements.lock). The driver's
    errors come out as SQLAlchemy's, as a statement through the session raises them:
    a locked database is an `OperationalError`, which the runner retries."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None, "a connection checked out has its driver's"
    try:
        result: _T = await driver._execute(work, driver._conn)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(
            None, None, exc, sqlite3.Error, dialect=connection.dialect
        ) from exc
    return result
