"""SQLite's ledger: a page is one transaction, written in one call on SQLite's thread.

SQLite runs in the worker's own process, so a statement costs no network round trip and
a transaction is the natural unit. It takes the database's write lock at its first
write and holds it to the commit, which orders pages (and their seqs) across every
process sharing the file.

What a commit does, in order, all of its writes in one transaction:
1. the page's rows, each reserving a `seq` from the task row, upserted: only the ones
   that differ from what is stored are written (the upsert's `WHERE`); the written ones
   took this page's seqs, and the new ones also its time as `created_at`, which one
   count over the page's seqs says. A row sent unchanged leaves a gap in the seqs (as
   on PostgreSQL); a resync's pages are compared first (`RunLedger.commit`), so only
   their changed rows are sent. A run of a task that had no records (`LeasedRun.fresh`)
   inserts its rows where their key is not stored (`DO NOTHING`), so the statement's
   own count of changes is the count of new rows and the count query goes (it was a
   tenth of SQLite's thread's time in a first sync: py-spy); where a key came back, the
   page is upserted after it, and the run upserts from then on;
2. the page validators;
3. the run's counters, checkpoint and lease, fenced by the lease: if this worker lost
   the run, nothing of the page is committed;
4. a mapped task's health samples of the rows sent (its pages are compared first: the
   rows sent are its new and changed records; `samples`);
5. on the last page (unless a cancel was asked for), the run's success and the task's
   outcome and watermark.

A run that detects deletions also marks every row of the page as seen by it (`seen_run`);
its sweep commits with its end (`RunLedger.succeed`).

Why steps 1-3 are one function run on aiosqlite's thread (`_PageRows.write`, through
`db.on_sqlite_thread`), in plain `sqlite3` with the rows as tuples, and the upsert one
multi-row statement per 1,000 rows (issue 13, item 4; session 10, SQLite, 100k records
in pages of 1,000; bench/ledger_write.py for the write path alone, bench/ingest.py end
to end; bench/RESULTS.md):
- through the session, each statement was four hops between the event loop and that
  thread (cursor, execute, fetch, close), with SQLAlchemy compiling it and processing
  its parameters on the event loop's thread: the write path alone ran at 42-49% of
  SQLite's `executemany` rate for the same rows; as one function, 78%;
- one statement for the page's rows, not `executemany`: SQLite runs it in one step
  with the GIL released throughout, so the event loop decodes the next page meanwhile
  (`executemany` steps once per row and takes the GIL back in between), and it does the
  same work in 60-77% of the time (bench/ceilings.py); with it the write path alone
  runs at 98-117% of the `executemany` rate, on 0.09-0.10 s of the event loop's CPU
  per 100k rows (before: 0.34-0.42). The rows had gone in as one JSON document read
  with `json_each`, whose escaping and parsing cost SQLite a quarter more than bound
  rows, with a `RETURNING` row per record.
End to end the first sync went from 23-25% of `executemany`'s rate (1.48-1.69 worker
CPU-s) to 34-42% (0.92-1.12 CPU-s), 24-32% of the one-statement upsert's. Samples and
the run's end, once per mapped page or per run, stay on the session, in the same
transaction.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.db import on_sqlite_thread, transaction
from service.models.types import UTCDateTime
from service.runs.ledger.base import RunLedger
from service.runs.ledger.outcomes import succeed_run
from service.runs.ledger.run import LeasedRun, PageWrite, Written
from service.runs.ledger.samples import write_samples
from service.runs.ledger.statements import (
    CLAIMED_TASK,
    PREVIOUS_OWNER,
    TASK,
    claimed_run_update,
)
from service.runs.ledger.statements import (
    COUNTERS as _COUNTERS,
)
from service.sync import Row

_CHANGED = (
    "SELECT j.value ->> 0, r.hash IS NULL OR r.deleted FROM json_each(:pairs) AS j "
    "LEFT JOIN record r ON r.task_id = :task_id AND r.key = j.value ->> 0 "
    "WHERE r.hash IS NOT (j.value ->> 1) OR r.deleted"
)
_MARK_SEEN = (
    "UPDATE record SET seen_run = :run_id WHERE task_id = :task_id"
    " AND key IN (SELECT value FROM json_each(:keys))"
)
_REMEMBER = (
    "INSERT INTO page_validator (task_id, url_key, etag, last_modified, next_page, digest,"
    " records_seen, rejected, records_digest, updated_at) SELECT :task_id, j.value ->> 0,"
    " j.value ->> 1, j.value ->> 2, CASE WHEN j.value ->> 3 IS NULL THEN NULL ELSE j.value -> 3"
    " END, j.value ->> 4, j.value ->> 5, j.value ->> 6, j.value ->> 7, :now"
    " FROM json_each(:validators) AS j"
    " WHERE true ON CONFLICT (task_id, url_key) DO UPDATE SET etag = excluded.etag,"
    " last_modified = excluded.last_modified, next_page = excluded.next_page,"
    " digest = excluded.digest, records_seen = excluded.records_seen,"
    " rejected = excluded.rejected, records_digest = excluded.records_digest,"
    " updated_at = excluded.updated_at"
)
_CLAIM_RUN = claimed_run_update()
_CLAIM_CAPPED = claimed_run_update(capped=True)
_READ_TASK = select(*(TASK.c[name] for name in CLAIMED_TASK)).where(
    TASK.c.id == bindparam("task_id")
)


class SqliteLedger(RunLedger):
    """Every commit is one transaction (see the module doc)."""

    async def _claim_row(self, session: AsyncSession, params: dict[str, Any]) -> Any | None:
        """SQLite's RETURNING cannot see other tables, nor can its CTEs write: the task
        is read in a second statement (each commits on its own; the run is ours from the
        first). The write comes first, so no read snapshot has to be upgraded to a write;
        and as a write it holds the database's write lock from its start, so the count
        of the tenant's running runs under the cap is the true one, whatever the number
        of workers claiming at once. The lease's previous owner is read before it, on
        its own (a takeover is counted, nothing is decided by it)."""
        previous = (await session.execute(PREVIOUS_OWNER, params)).scalar_one_or_none()
        claim = _CLAIM_CAPPED if self.tenant_cap else _CLAIM_RUN
        run = (await session.execute(claim, params)).one_or_none()
        if run is None:
            return None
        task = (await session.execute(_READ_TASK, {"task_id": run.task_id})).one_or_none()
        return None if task is None else (*run, *task, previous)

    async def _changed(self, task_id: str, rows: list[Row]) -> dict[str, bool]:
        """One hop to SQLite's thread, like a page's write (`on_sqlite_thread`)."""
        pairs = orjson.dumps([(row.key, row.hash) for row in rows]).decode()
        params = {"task_id": task_id, "pairs": pairs}
        async with self.sessionmaker() as session:
            found = await on_sqlite_thread(session, functools.partial(_changed_rows, params))
        return {key: bool(new) for key, new in found}

    async def _write(self, run: LeasedRun, write: PageWrite) -> Written:
        page = _PageRows.of(run, self.owner, write)
        async with transaction(self.sessionmaker) as session:
            written = await on_sqlite_thread(session, page.write)
            if written is None:
                await session.rollback()
                return Written(0, None)
            inserted, changed, cancel = written
            if inserted < len(write.rows):
                run.fresh = False  # a key came back: this run's pages are upserted from now on
            if run.health_mapping is not None:  # its pages are compared first: the rows
                await write_samples(session, run, write.rows, write.now)  # sent changed
            if write.ending is not None and not cancel:
                await succeed_run(session, run, self.owner, write.ending)
        return Written(changed, cancel)


_DIALECT = sqlite.dialect()
_BIND_TIME = UTCDateTime().dialect_impl(_DIALECT).bind_processor(_DIALECT)


def _time(value: datetime) -> str:
    """`value` as SQLAlchemy writes a `UTCDateTime` to SQLite, for the raw statements."""
    assert _BIND_TIME is not None, "SQLite stores datetimes as text"
    return str(_BIND_TIME(value))


_COUNTED = ("inserted", "updated", "unchanged")
"""The run counters the write itself counts (added to what the batched quiet pages say)."""
_RESERVE_SQL = (
    "UPDATE task SET record_seq = record_seq + ?1 WHERE id = ?2 RETURNING record_seq - ?1"
)
_CHUNK = 1000
"""Rows per upsert statement: 4 parameters each, well under SQLite's 32,766."""


def _chunks(
    task_id: str, now: str, rows: list[tuple[str, str, str]], first: int
) -> Iterator[tuple[int, list[Any]]]:
    """Each statement's row count and parameters (`_upsert_sql`), seqs from `first` + 1."""
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        params: list[Any] = [task_id, now]
        for n, (key, data, digest) in enumerate(chunk, start=first + start + 1):
            params += (key, data, digest, n)
        yield len(chunk), params


@functools.lru_cache(maxsize=32)
def _insert_sql(rows: int) -> str:
    """`_upsert_sql`'s rows, inserted where their key is not stored, else left alone."""
    upsert = _upsert_sql(rows)
    return upsert[: upsert.index(" ON CONFLICT")] + " ON CONFLICT (task_id, key) DO NOTHING"


@functools.lru_cache(maxsize=32)
def _upsert_sql(rows: int) -> str:
    """The upsert of `rows` rows in one statement: ?1 the task, ?2 the time, then key,
    data, hash and seq of each row."""
    values = ", ".join(
        f"(?1, ?{3 + 4 * i}, ?{4 + 4 * i}, ?{5 + 4 * i}, ?{6 + 4 * i}, ?2, ?2)" for i in range(rows)
    )
    return (  # placeholders only: no value is in the SQL
        "INSERT INTO record (task_id, key, data, hash, seq, created_at, updated_at)"  # noqa: S608
        f" VALUES {values}"
        " ON CONFLICT (task_id, key) DO UPDATE SET data = excluded.data, hash = excluded.hash,"
        " seq = excluded.seq, updated_at = excluded.updated_at, deleted = false,"
        " created_at = CASE WHEN record.deleted THEN excluded.created_at"
        " ELSE record.created_at END WHERE record.hash <> excluded.hash OR record.deleted"
    )


_NEW_SQL = "SELECT count(*) FROM record WHERE task_id = ?1 AND seq > ?2 AND created_at = ?3"
_PROGRESS_SQL = (  # the column names are constants: nothing of a caller's is in the SQL
    "UPDATE run SET "  # noqa: S608
    + ", ".join(f"{name} = {name} + :{name}" for name in (*_COUNTERS, *_COUNTED))
    + ", checkpoint = :checkpoint, lease_expires_at = :lease_until"
    " WHERE id = :run_id AND status = 'running' AND lease_owner = :owner"  # `held`'s fence
    " RETURNING cancel_requested"
)


@dataclass(frozen=True, slots=True)
class _PageRows:
    """A page's rows, validators and progress, ready for `write` on SQLite's thread."""

    task_id: str
    rows: list[tuple[str, str, str]]
    now: str
    seen: dict[str, Any] | None
    validators: dict[str, Any] | None
    progress: dict[str, Any]
    distinct: int
    fresh: bool

    @classmethod
    def of(cls, run: LeasedRun, owner: str, write: PageWrite) -> _PageRows:
        counters = (*_COUNTERS, *_COUNTED)
        progress: dict[str, Any] = {name: write.progress.get(name, 0) for name in counters}
        progress.update(
            checkpoint=orjson.dumps(write.checkpoint).decode(),
            lease_until=_time(write.lease_until),
            run_id=run.run_id,
            owner=owner,
        )
        seen = None
        if run.sweeps and write.rows:  # every row this run saw, changed or not
            keys = orjson.dumps([row.key for row in write.rows]).decode()
            seen = {"run_id": run.run_id, "task_id": run.task_id, "keys": keys}
        validators = None
        if write.validators:
            validators = _validator_params(run.task_id, write)
            validators["now"] = _time(validators["now"])
        return cls(
            run.task_id,
            [(row.key, row.data, row.hash) for row in write.rows],
            _time(write.now),
            seen,
            validators,
            progress,
            write.distinct,
            run.fresh,
        )

    def write(self, connection: sqlite3.Connection) -> tuple[int, int, bool] | None:
        """Rows, seen marks, validators, then the fenced progress; (inserted, changed,
        cancel requested), or None when the task is gone or the lease not ours (the
        caller rolls back)."""
        task_id, rows, now = self.task_id, self.rows, self.now
        reserved = connection.execute(_RESERVE_SQL, (len(rows), task_id)).fetchall()
        if not reserved:
            return None
        assert connection.in_transaction, "the session's transaction holds the page"
        inserted = changed = 0
        if rows:
            chunks = list(_chunks(task_id, now, rows, reserved[0][0]))
            if self.fresh:  # new rows only: each says it is new by being written
                for size, params in chunks:
                    inserted += connection.execute(_insert_sql(size), params).rowcount
                changed = inserted
            if not self.fresh or inserted < len(rows):  # (a key came back: upserted)
                for size, params in chunks:
                    changed += connection.execute(_upsert_sql(size), params).rowcount
                if not self.fresh and changed:  # the written took the page's seqs,
                    query = (task_id, reserved[0][0], now)  # the new ones its time too
                    (inserted,) = connection.execute(_NEW_SQL, query).fetchone()
        if self.seen is not None:
            connection.execute(_MARK_SEEN, self.seen)
        if self.validators is not None:
            connection.execute(_REMEMBER, self.validators)
        progress = dict(self.progress)
        progress["inserted"] += inserted
        progress["updated"] += changed - inserted
        progress["unchanged"] += self.distinct - changed
        fenced = connection.execute(_PROGRESS_SQL, progress).fetchall()
        if not fenced:
            return None
        return inserted, changed, bool(fenced[0][0])


def _validator_params(task_id: str, write: PageWrite) -> dict[str, Any]:
    validators = [
        (
            key,
            v.etag,
            v.last_modified,
            v.next_page,
            v.digest,
            v.records_seen,
            v.rejected,
            v.records_digest,
        )
        for key, v in write.validators
    ]
    return {"task_id": task_id, "now": write.now, "validators": orjson.dumps(validators).decode()}


def _changed_rows(params: dict[str, Any], connection: sqlite3.Connection) -> list[Any]:
    return connection.execute(_CHANGED, params).fetchall()
