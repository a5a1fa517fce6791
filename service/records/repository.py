"""Bulk record SQL: one statement per page for reads and one for writes.

PostgreSQL gets the rows as arrays through `unnest` (each text array packed into one
string, see `packed`) and SQLite as one JSON document through `json_each`: a single
round trip and a single statement to plan, whatever the page size (no per-row
statements, no thousand-parameter VALUES lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import TextualSelect
from sqlmodel import col

from service.models import Record, Task
from service.models.types import UTCDateTime

UNIT_SEPARATOR = "\x1f"


def text_array(name: str) -> str:
    """SQL for the text array in parameter `name`, sent as one string (see `packed`)."""
    return f"string_to_array(CAST(:{name} AS text), chr(31))"


PG_PAGE_ROWS = f"unnest({text_array('keys')}, {text_array('datas')}, {text_array('hashes')})"
"""A page's (key, data, hash) rows from the packed parameters `keys`, `datas`, `hashes`."""


def packed(values: list[str]) -> str:
    """A PostgreSQL text array as one parameter: the values joined by U+001F.

    asyncpg checks every element of a list parameter against `collections.abc` classes,
    in Python: for a page's 3,000 strings that was a fifth of the worker's critical path
    (bench/ingest.py). Keys and data are canonical JSON, which escapes every control
    character, and hashes are hex, so U+001F never occurs inside a value; nor is any
    value empty (an empty string would vanish from the array).
    """
    if "" in values:
        raise ValueError("an empty value cannot be packed")
    return UNIT_SEPARATOR.join(values)


# Which of a page's (key, hash) pairs differ from what is stored, and whether each is
# new: an unchanged page answers with no rows at all.
# The stored hash is looked up per key (LATERAL): an index probe each, whatever the
# planner's statistics say. Right after a large first load the table is not analyzed
# yet, and a plain join was planned as a hash join over every record of the task.
_PG_STORED = (
    "LEFT JOIN LATERAL (SELECT r.hash FROM record r WHERE r.task_id = CAST(:task_id AS varchar)"
    " AND r.key = {key}) AS r ON true"
)
_PG_CHANGED = text(
    "SELECT t.k, r.hash IS NULL FROM unnest("  # noqa: S608
    + text_array("keys")
    + ", "
    + text_array("hashes")
    + ") AS t(k, h) "
    + _PG_STORED.format(key="t.k")
    + " WHERE r.hash IS DISTINCT FROM t.h"
)
_SQLITE_CHANGED = text(
    "SELECT j.value ->> 0, r.hash IS NULL FROM json_each(:pairs) AS j "
    "LEFT JOIN record r ON r.task_id = :task_id AND r.key = j.value ->> 0 "
    "WHERE r.hash IS NOT (j.value ->> 1)"
)
ON_CONFLICT_CHANGED = (
    "ON CONFLICT (task_id, key) DO UPDATE SET data = excluded.data, hash = excluded.hash, "
    "seq = excluded.seq, updated_at = excluded.updated_at WHERE record.hash <> excluded.hash"
)
# The rows of a CTE `page(k, d, h, n)` that differ from what is stored, numbered in page
# order, and whether each is new.
PG_CHANGED_ROWS = (
    " SELECT p.k, p.d, p.h, r.hash IS NULL AS is_new,"  # noqa: S608
    " row_number() OVER (ORDER BY p.n) AS i FROM page p "
    + _PG_STORED.format(key="p.k")
    + " WHERE r.hash IS DISTINCT FROM p.h"
)
# Constant SQL (S608 is a false positive): every value is a bound parameter.
_PG_UPSERT = text(
    "INSERT INTO record (task_id, key, data, hash, seq, created_at, updated_at) "  # noqa: S608
    "SELECT CAST(:task_id AS varchar), k, d, h, s, CAST(:now AS timestamptz), "
    "CAST(:now AS timestamptz) FROM unnest("
    + ", ".join(text_array(name) for name in ("keys", "datas", "hashes"))
    + ", CAST(:seqs AS bigint[])) AS t(k, d, h, s) "
    + ON_CONFLICT_CHANGED
).bindparams(bindparam("now", type_=UTCDateTime()))
_SQLITE_UPSERT = text(
    "INSERT INTO record (task_id, key, data, hash, seq, created_at, updated_at) "
    "SELECT :task_id, j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, :now, :now "
    "FROM json_each(:rows) AS j WHERE true " + ON_CONFLICT_CHANGED
).bindparams(bindparam("now", type_=UTCDateTime()))


# PostgreSQL does a whole page in one statement: compare with what is stored, reserve
# seqs on the task row (its lock orders concurrent pages), write only what changed, and
# count. One round trip and one plan per page.
_PG_PAGE = text(
    "WITH page AS ("  # noqa: S608
    " SELECT t.k, t.d, t.h, t.n FROM " + PG_PAGE_ROWS + " WITH ORDINALITY AS t(k, d, h, n)"
    "), changed AS (" + PG_CHANGED_ROWS + "), seq AS ("
    " UPDATE task SET record_seq = record_seq + (SELECT count(*) FROM changed)"
    " WHERE id = CAST(:task_id AS varchar) AND EXISTS (SELECT 1 FROM changed)"
    " RETURNING record_seq - (SELECT count(*) FROM changed) AS base"
    "), written AS ("
    " INSERT INTO record (task_id, key, data, hash, seq, created_at, updated_at)"
    " SELECT CAST(:task_id AS varchar), c.k, c.d, c.h, s.base + c.i,"
    " CAST(:now AS timestamptz), CAST(:now AS timestamptz) FROM changed c CROSS JOIN seq s "
    + ON_CONFLICT_CHANGED
    + " RETURNING 1"
    ") SELECT (SELECT count(*) FROM changed WHERE is_new), (SELECT count(*) FROM changed),"
    " (SELECT count(*) FROM seq)"
).bindparams(bindparam("now", type_=UTCDateTime()))


def _is_pg(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def changed_keys(
    session: AsyncSession, task_id: str, pairs: list[tuple[str, str]]
) -> dict[str, bool]:
    """For the (key, hash) pairs that differ from the stored records: key -> is it new."""
    if not pairs:
        return {}
    if _is_pg(session):
        keys, hashes = (list(column) for column in zip(*pairs, strict=True))
        result = await session.execute(
            _PG_CHANGED, {"task_id": task_id, "keys": packed(keys), "hashes": packed(hashes)}
        )
    else:
        result = await session.execute(
            _SQLITE_CHANGED, {"task_id": task_id, "pairs": orjson.dumps(pairs).decode()}
        )
    return {row[0]: bool(row[1]) for row in result.all()}


def writes_pages_in_one_statement(session: AsyncSession) -> bool:
    return _is_pg(session)


async def write_page(
    session: AsyncSession, task_id: str, rows: Sequence[tuple[str, str, str]], now: datetime
) -> tuple[int, int] | None:
    """(key, data, hash) rows with distinct keys -> (inserted, changed), or None when the
    task is gone. PostgreSQL only (see `writes_pages_in_one_statement`)."""
    keys, datas, hashes = (list(column) for column in zip(*rows, strict=True))
    params = {
        "task_id": task_id,
        "now": now,
        "keys": packed(keys),
        "datas": packed(datas),
        "hashes": packed(hashes),
    }
    inserted, changed, task_found = (await session.execute(_PG_PAGE, params)).one()
    if changed and not task_found:
        return None
    return int(inserted), int(changed)


async def delete_for_task(session: AsyncSession, task_id: str) -> None:
    """Records have no foreign key to their task (PostgreSQL would check it row by row on
    every insert); a deleted task's records go with it here, after the task row is locked
    by its own deletion, so no page transaction can add more."""
    await session.execute(delete(Record).where(col(Record.task_id) == task_id))


async def allocate_seqs(session: AsyncSession, task_id: str, count: int) -> int | None:
    """Reserve `count` seqs; returns the last one, or None when the task is gone.

    The UPDATE row-locks the task until commit, so seqs become visible in order.
    """
    result = await session.execute(
        update(Task)
        .where(col(Task.id) == task_id)
        .values(record_seq=col(Task.record_seq) + count)
        .returning(col(Task.record_seq))
    )
    return result.scalar_one_or_none()


async def upsert(
    session: AsyncSession, task_id: str, rows: Sequence[tuple[str, str, str, int]], now: datetime
) -> None:
    """Write (key, data, hash, seq) rows; a row whose hash did not change is left alone."""
    if not rows:
        return
    if _is_pg(session):
        keys, datas, hashes, seqs = (list(column) for column in zip(*rows, strict=True))
        params: dict[str, Any] = {
            "task_id": task_id,
            "now": now,
            "keys": packed(keys),
            "datas": packed(datas),
            "hashes": packed(hashes),
            "seqs": seqs,
        }
        await session.execute(_PG_UPSERT, params)
    else:
        payload = orjson.dumps(rows).decode()
        await session.execute(_SQLITE_UPSERT, {"task_id": task_id, "now": now, "rows": payload})


async def feed(session: AsyncSession, task_id: str, after: int, limit: int) -> Sequence[Record]:
    result = await session.execute(
        select(Record)
        .where(col(Record.task_id) == task_id, col(Record.seq) > after)
        .order_by(col(Record.seq))
        .limit(limit)
    )
    return result.scalars().all()


# A user's change feed: the records of the tenant's tasks of `user_id` after each task's
# position (`positions`, a JSON object task id -> seq; absent means 0), in (seq, task_id)
# order. No task can contribute more than `limit` rows, so each task's range ends at its
# `limit`-th seq after its position (`upto`, a walk along the (task_id, seq) index) and
# the join reads at most `limit` rows per task, each task a range of that index, however
# many records the user has: about a millisecond for 3 tasks of 200,000 records on
# either database. The CROSS JOIN makes SQLite (which has no statistics unless ANALYZE
# ran) read the positions before the records; joined the other way round it read every
# record of each task (4.7 s there). PostgreSQL plans it as a plain join.
_USER_CHANGES = """
WITH pos AS (
 SELECT t.id AS task_id, COALESCE(CAST(p.value AS bigint), 0) AS after_seq
 FROM task t LEFT JOIN {positions} AS p ON p.key = t.id
 WHERE t.tenant_id = :tenant_id AND t.user_id = :user_id
), span AS (
 SELECT pos.task_id, pos.after_seq, COALESCE((
  SELECT r.seq FROM record r WHERE r.task_id = pos.task_id AND r.seq > pos.after_seq
  ORDER BY r.seq LIMIT 1 OFFSET :last
 ), 9223372036854775807) AS upto FROM pos
)
SELECT {columns}
FROM span s CROSS JOIN record r
WHERE r.task_id = s.task_id AND r.seq > s.after_seq AND r.seq <= s.upto
ORDER BY r.seq, r.task_id
LIMIT :limit
"""


def _user_changes(positions: str) -> TextualSelect:
    """The statement, with the JSON table function of a database for the positions. Its
    columns are typed, so the ORM loads `Record`s (and `updated_at` is a UTC datetime)."""
    columns = inspect(Record).columns
    sql = _USER_CHANGES.format(
        positions=positions, columns=", ".join(f"r.{column.name}" for column in columns)
    )
    return text(sql).columns(*columns)


_PG_USER_CHANGES = _user_changes("json_each_text(CAST(:positions AS json))")
_SQLITE_USER_CHANGES = _user_changes("json_each(:positions)")


async def user_changes(
    session: AsyncSession,
    tenant_id: str,
    user_id: str,
    positions: dict[str, int],
    limit: int,
) -> Sequence[Record]:
    """Up to `limit` records of the user's tasks after `positions`, by (seq, task_id)."""
    statement = _PG_USER_CHANGES if _is_pg(session) else _SQLITE_USER_CHANGES
    params = {
        "tenant_id": tenant_id,
        "user_id": user_id,
        "positions": orjson.dumps(positions).decode(),
        "last": limit - 1,
        "limit": limit,
    }
    result = await session.execute(select(Record).from_statement(statement), params)
    return result.scalars().all()
