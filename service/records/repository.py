"""Reading the change feeds. Records are written only by the worker, through the run
ledger (`service.runs.ledger`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import TextualSelect
from sqlmodel import col

from service.models import Record, Task


async def feed(session: AsyncSession, task_id: str, after: int, limit: int) -> Sequence[Record]:
    result = await session.execute(
        select(Record)
        .where(col(Record.task_id) == task_id, col(Record.seq) > after)
        .order_by(col(Record.seq))
        .limit(limit)
    )
    return result.scalars().all()


async def user_task_ids(session: AsyncSession, tenant_id: str, user_id: str) -> set[str]:
    result = await session.execute(
        select(col(Task.id)).where(col(Task.tenant_id) == tenant_id, col(Task.user_id) == user_id)
    )
    return set(result.scalars().all())


# For each of the user's tasks, its position from the cursor (0 if absent); the seq of
# its `limit`-th record after that (an index walk on `uq_record_task_id_seq`); then only
# that range of each task's records, merged by (seq, task_id). The CROSS JOIN keeps
# SQLite, which has no statistics before ANALYZE, from reading every record of a task.
_USER_CHANGES = """
WITH pos AS (
 SELECT t.id AS task_id, COALESCE(p.after_seq, 0) AS after_seq
 FROM task t LEFT JOIN ({positions}) AS p ON p.task_id = t.id
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


def _user_changes(count: int) -> TextualSelect:
    """The statement for a cursor of `count` positions, given as a VALUES list (the
    same SQL on PostgreSQL and SQLite, both of which name its columns column1, 2...).
    Its columns are typed, so the ORM loads `Record`s."""
    rows = ", ".join(f"(:t{i}, CAST(:p{i} AS bigint))" for i in range(max(count, 1)))
    positions = f"SELECT column1 AS task_id, column2 AS after_seq FROM (VALUES {rows}) AS v"  # noqa: S608
    columns = inspect(Record).columns
    sql = _USER_CHANGES.format(
        positions=positions, columns=", ".join(f"r.{column.name}" for column in columns)
    )
    return text(sql).columns(*columns)


async def user_changes(
    session: AsyncSession,
    tenant_id: str,
    user_id: str,
    positions: dict[str, int],
    limit: int,
) -> Sequence[Record]:
    """Up to `limit` records of the user's tasks after `positions`, by (seq, task_id)."""
    pairs = list(positions.items()) or [("", 0)]  # a VALUES list needs a row
    params: dict[str, object] = {
        "tenant_id": tenant_id,
        "user_id": user_id,
        "last": limit - 1,
        "limit": limit,
    }
    for i, (task_id, seq) in enumerate(pairs):
        params[f"t{i}"], params[f"p{i}"] = task_id, seq
    statement = select(Record).from_statement(_user_changes(len(pairs)))
    result = await session.execute(statement, params)
    return result.scalars().all()
