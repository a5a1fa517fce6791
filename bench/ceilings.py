"""The database's own rate for the rows a first sync writes, measured in the same run as
Backsync (issue 13: "measured against the limit, not only against a peer").

The rows are Backsync's own (`service.sync.extract`: key, canonical data, hash) for the
benchmark's pages, prepared before any clock starts, and written page by page (one
transaction per page, as a sync commits) into a copy of the `record` table with the
same indexes:

- **batched upsert**: one `INSERT … ON CONFLICT (task_id, key) DO UPDATE … WHERE the
  hash differs` per page. PostgreSQL: the rows as arrays through `unnest`, one
  statement; SQLite: `executemany` in one transaction. The raw driver (asyncpg, the
  stdlib `sqlite3`), no ORM: what the database does for a caller with nothing else to
  do;
- **one-statement upsert** (SQLite only, session 10): the same upsert with every row of
  the page in one multi-row `VALUES` statement, which is how Backsync's SQLite ledger
  sends a page. `executemany` steps, resets and counts one single-row statement per
  row; one statement does the same work in 60-77% of the time (0.18 against 0.29-0.31
  CPU-s for 100k rows in raw `sqlite3`; 0.30-0.32 against 0.39-0.43 s here), so it is
  the stricter of SQLite's two ceilings (`bench/RESULTS.md`, session 10);
- **COPY** (PostgreSQL only): `COPY … FROM STDIN` of each page into the empty table,
  what the database takes fastest for pure inserts.

Backsync's figures are then printed as a share of these (`bench/ingest.py`).

On PostgreSQL each ceiling starts from a `CHECKPOINT` (as each of the benchmark's runs
does, `bench.ingest.checkpoint`): without one, whichever write came second paid for
flushing the dirty buffers of the one before it, and for a checkpoint that fell due
meanwhile (the upsert's time varied 1.1-2.0 s on one machine within an hour).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
from sqlalchemy.engine import make_url

from bench.upstream import render_pages
from service.sync.extract import extract, records_of

TABLE = "ceiling_record"
TASK = "tsk_ceiling"


Pages = list[list[tuple[str, str, str]]]
"""Each page's rows: (key, data, hash)."""


def prepared_pages(records: int, page_size: int) -> Pages:
    """The benchmark's pages as Backsync stores their rows: (key, data, hash)."""
    pages = []
    for raw in render_pages(records, page_size).values():
        extracted = extract(records_of(orjson.loads(raw), "data"), "id")
        pages.append([(row.key, row.data, row.hash) for row in extracted.rows])
    return pages


async def database_ceilings(database_url: str, pages: Pages) -> dict[str, float]:
    """Seconds to write every page: `upsert` (and `copy` on PostgreSQL)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return await asyncio.to_thread(_sqlite_ceilings, str(url.database), pages)
    return await _postgres_ceilings(url.set(drivername="postgresql"), pages)


_PG_UPSERT = (
    f"INSERT INTO {TABLE} (task_id, key, data, hash, seq, created_at, updated_at)"  # noqa: S608
    " SELECT $1, t.k, t.d, t.h, $5 + t.n, $6, $6 FROM unnest($2::text[], $3::text[], $4::text[])"
    " WITH ORDINALITY AS t(k, d, h, n)"
    " ON CONFLICT (task_id, key) DO UPDATE SET data = excluded.data, hash = excluded.hash,"
    f" seq = excluded.seq, updated_at = excluded.updated_at WHERE {TABLE}.hash <> excluded.hash"
)


async def _postgres_ceilings(url: Any, pages: Pages) -> dict[str, float]:
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await connection.execute(f"CREATE TABLE {TABLE} (LIKE record INCLUDING ALL)")
        now = datetime.now(UTC)
        await _checkpoint(connection)
        start = time.perf_counter()
        seq = 0
        for rows in pages:
            keys, datas, hashes = (list(column) for column in zip(*rows, strict=True))
            await connection.execute(_PG_UPSERT, TASK, keys, datas, hashes, seq, now)
            seq += len(rows)
        upsert = time.perf_counter() - start
        await connection.execute(f"TRUNCATE {TABLE}")
        columns = ["task_id", "key", "data", "hash", "seq", "created_at", "updated_at"]
        await _checkpoint(connection)
        start = time.perf_counter()
        seq = 0
        for rows in pages:
            copied = [(TASK, k, d, h, seq + n, now, now) for n, (k, d, h) in enumerate(rows, 1)]
            await connection.copy_records_to_table(TABLE, records=copied, columns=columns)
            seq += len(rows)
        copy = time.perf_counter() - start
        await connection.execute(f"DROP TABLE {TABLE}")
    finally:
        await connection.close()
    return {"upsert_seconds": round(upsert, 4), "copy_seconds": round(copy, 4)}


async def _checkpoint(connection: Any) -> None:
    """A `CHECKPOINT`, where the role may (a superuser, or `pg_checkpoint`)."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await connection.execute("CHECKPOINT")


def _sqlite_ceilings(path: str, pages: Pages) -> dict[str, float]:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        ddl = connection.execute(
            "SELECT type, sql FROM sqlite_master WHERE tbl_name = 'record' AND sql IS NOT NULL"
            " ORDER BY type = 'index'"
        ).fetchall()

        def fresh_table() -> None:
            connection.execute(f"DROP TABLE IF EXISTS {TABLE}")
            for _type, sql in ddl:  # the table, then its indexes, renamed
                connection.execute(sql.replace("record", TABLE, 2))

        upsert = (
            f"INSERT INTO {TABLE} (task_id, key, data, hash, seq, created_at, updated_at,"  # noqa: S608
            " deleted) VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (task_id, key) DO UPDATE SET"
            " data = excluded.data, hash = excluded.hash, seq = excluded.seq,"
            f" updated_at = excluded.updated_at WHERE {TABLE}.hash <> excluded.hash"
        )
        now = datetime.now(UTC).isoformat()
        fresh_table()
        start = time.perf_counter()
        seq = 0
        for rows in pages:
            connection.execute("BEGIN")
            connection.executemany(
                upsert, [(TASK, k, d, h, seq + n, now, now) for n, (k, d, h) in enumerate(rows, 1)]
            )
            connection.execute("COMMIT")
            seq += len(rows)
        seconds = time.perf_counter() - start
        fresh_table()
        start = time.perf_counter()
        seq = 0
        for rows in pages:
            params: list[Any] = [TASK, now]
            for n, (k, d, h) in enumerate(rows, seq + 1):
                params += (k, d, h, n)
            connection.execute("BEGIN")
            connection.execute(_sqlite_one_statement(len(rows)), params)
            connection.execute("COMMIT")
            seq += len(rows)
        one_statement = time.perf_counter() - start
        connection.execute(f"DROP TABLE {TABLE}")
    finally:
        connection.close()
    return {
        "upsert_seconds": round(seconds, 4),
        "upsert_one_statement_seconds": round(one_statement, 4),
    }


def _sqlite_one_statement(rows: int) -> str:
    """The same upsert as one statement of `rows` rows: ?1 the task, ?2 the time, then
    key, data, hash and seq of each row (what `runs.ledger.sqlite` sends)."""
    values = ", ".join(
        f"(?1, ?{3 + 4 * i}, ?{4 + 4 * i}, ?{5 + 4 * i}, ?{6 + 4 * i}, ?2, ?2, 0)"
        for i in range(rows)
    )
    return (
        f"INSERT INTO {TABLE} (task_id, key, data, hash, seq, created_at, updated_at, deleted)"  # noqa: S608
        f" VALUES {values} ON CONFLICT (task_id, key) DO UPDATE SET data = excluded.data,"
        " hash = excluded.hash, seq = excluded.seq, updated_at = excluded.updated_at"
        f" WHERE {TABLE}.hash <> excluded.hash"
    )
