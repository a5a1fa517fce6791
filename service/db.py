"""Engine and session factories.

SQLite runs in WAL mode with a busy timeout so the API and the worker (separate
processes) can both write; foreign keys are switched on so deletes cascade.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import asyncpg  # type: ignore[import-untyped]
import orjson
from sqlalchemy import BindParameter, ColumnElement, Executable, bindparam, event
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


class Statements(Protocol):
    """Where a function that is a few single statements runs them: `QuickStatements`
    (each on its own, outside any transaction) or `InSession` (in a session's)."""

    async def first(
        self, statement: Executable, params: Mapping[str, Any], *, retry: bool = False
    ) -> Mapping[Any, Any] | None: ...


class InSession:
    """`Statements` in `session`'s transaction, for callers that write more in it."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def first(
        self, statement: Executable, params: Mapping[str, Any], *, retry: bool = False
    ) -> Mapping[Any, Any] | None:
        del retry  # a transaction is not retried statement by statement
        result = await self.session.execute(statement, dict(params))
        return result.mappings().first()


class QuickStatements:
    """Single statements of the API's hot paths (`GET /v1/runs/{id}`, a trigger), each
    atomic on its own and run outside any transaction.

    Why: a one-row read through SQLAlchemy's `AsyncConnection` cost the API process
    about 420 µs of CPU (pool checkout and checkin with their events, greenlet switches,
    result processing), the read itself about 50 µs: on PostgreSQL the statement runs
    straight on an asyncpg connection of a pool of its own (half the API's
    connections), compiled once for the asyncpg dialect and prepared once per
    connection by asyncpg (bench/api.py, in-process: a GET's API CPU went from about
    700 to 460 µs with this alone).
    Rows come back as the Core statement's would: JSON decoded by a codec each
    connection gets, `timestamptz` as aware UTC datetimes; so only for statements whose
    columns need no other result processing (tests/runs/test_run_reads.py compares the
    paths). Elsewhere (SQLite), the same Core statement runs on `reads` (autocommit).

    The connections are `_Connections`, not asyncpg's pool. A statement that fails
    because its connection died while idle (a database restart) is tried once more on a
    new one, for reads only (`retry`); the SQLAlchemy pool pings idle connections
    instead.
    """

    def __init__(self, reads: AsyncEngine, connections: int) -> None:
        self._reads = reads
        self._connections = connections
        self._pool: _Connections | None = None
        self._compiled: dict[int, tuple[Executable, str, tuple[str, ...], dict[str, Any]]] = {}

    @property
    def on_driver(self) -> bool:
        return self._reads.dialect.driver == "asyncpg"

    async def start(self) -> None:
        if not self.on_driver or self._pool is not None:
            return
        args, kwargs = self._reads.dialect.create_connect_args(self._reads.url)

        async def connect() -> Any:
            connection = await asyncpg.connect(*args, **kwargs)
            await _json_codecs(connection)
            return connection

        self._pool = _Connections(connect, self._connections)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def first(
        self, statement: Executable, params: Mapping[str, Any], *, retry: bool = False
    ) -> Mapping[Any, Any] | None:
        """The statement's first row (None: no row). `retry`: the statement may run twice
        (a read) if its connection turns out dead."""
        if self._pool is None:
            async with self._reads.connect() as connection:
                result = await connection.execute(statement, dict(params))
                return result.mappings().first()
        sql, names, fixed = self._sql(statement)
        values = [params[name] if name in params else fixed[name] for name in names]
        for attempt in range(2 if retry else 1):
            connection = await self._pool.acquire()
            try:
                row = await connection.fetchrow(sql, *values)
            except _DEAD_CONNECTION:
                self._pool.discard(connection)
                if attempt or not retry:
                    raise
                continue
            except asyncpg.PostgresError:
                self._pool.release(connection)  # an error of the statement: still usable
                raise
            except BaseException:  # cancelled mid-statement, say: in no known state
                self._pool.discard(connection)
                raise
            self._pool.release(connection)
            return None if row is None else dict(row.items())
        raise AssertionError("unreachable")

    def _sql(self, statement: Executable) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        """The statement's SQL for asyncpg (`$1`, `$2`, ...), the names of its
        parameters in that order and the values of those it fixes itself (literals),
        compiled once (statements are module constants)."""
        found = self._compiled.get(id(statement))
        if found is None or found[0] is not statement:
            compiled = statement.compile(dialect=self._reads.dialect)  # type: ignore[attr-defined]
            names = tuple(compiled.positiontup or ())
            fixed = {
                name: value
                for name, value in compiled.params.items()
                if not compiled.binds[name].required  # a caller's must be given
            }
            found = (statement, compiled.string, names, fixed)
            self._compiled[id(statement)] = found
        return found[1], found[2], found[3]


_DEAD_CONNECTION = (
    asyncpg.PostgresConnectionError,  # 08xxx, e.g. the connection does not exist
    asyncpg.AdminShutdownError,  # 57P01, what a restart or pg_terminate_backend sends
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,  # the connection is closed
    OSError,
)
"""What a statement on a connection that died while idle raises."""


async def _json_codecs(connection: Any) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, schema="pg_catalog", encoder=_json_dumps, decoder=orjson.loads
        )


class _Connections:
    """Up to `size` asyncpg connections, opened when first needed, handed out last used
    first; a request finding none free waits for one, in turn (a connection given back
    goes to the longest waiter).

    Why not asyncpg's pool: its release goes through `asyncio.shield` (a task per
    release) and a queue, and resets each connection (a round trip, unless told not
    to): 50 µs of CPU a read with it, 20 µs with this (50 concurrent readers, 10
    connections). Nothing to reset here: `QuickStatements` opens no transaction and
    changes no session setting. A connection that failed, or whose statement was
    interrupted, is closed, not handed out again (`discard`).
    """

    def __init__(self, connect: Callable[[], Awaitable[Any]], size: int) -> None:
        self._connect = connect
        self._size = size
        self._idle: list[Any] = []
        self._open = 0
        """Connections open or being opened, idle or not."""
        self._waiters: deque[asyncio.Future[Any]] = deque()
        """Each gets a connection, or None: a place was freed, open one."""
        self._closed = False

    async def acquire(self) -> Any:
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the connections are closed")
            while self._idle:
                connection = self._idle.pop()
                if not connection.is_closed():
                    return connection
                self._open -= 1
            if self._open < self._size:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # served, then cancelled
                    if waiter.result() is None:
                        self._wake()
                    else:
                        self.release(waiter.result())
                raise
            if handed is not None:
                return handed

    def release(self, connection: Any) -> None:
        if self._closed or connection.is_closed():
            self.discard(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def discard(self, connection: Any) -> None:
        connection.terminate()
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._open -= 1
            await connection.close(timeout=2)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


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
