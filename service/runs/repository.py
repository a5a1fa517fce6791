from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Column,
    RowMapping,
    TextualSelect,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlmodel import col

from service.db import QuickStatements, Statements, values_rows
from service.models import ACTIVE_STATUSES, Run, metadata
from service.models.run import ACTIVE_SQL

SHOWN_COLUMNS = (
    *("id", "task_id", "status", "trigger", "attempt", "created_at", "started_at"),
    *("finished_at", "next_attempt_at", "cancel_requested", "waiting_reason", "error"),
    *("attempts", "pages", "requests", "not_modified", "records_seen", "inserted"),
    *("updated", "unchanged", "rejected", "deleted", "bytes"),
    *("samples_written", "samples_rejected"),
)
"""The run columns a `RunOut` is made of (`service.out_of_row`, the one way a run is
shown, from a row or an ORM object)."""


async def get_for_tenant(session: AsyncSession, tenant_id: str, run_id: str) -> Run | None:
    result = await session.execute(
        select(Run).where(col(Run.id) == run_id, col(Run.tenant_id) == tenant_id)
    )
    return result.scalar_one_or_none()


async def end_waiting(session: AsyncSession, tenant_id: str, run_id: str, now: datetime) -> bool:
    """Cancel the run if it is queued or retrying, in one conditional statement; whether
    it was (`service.cancel`)."""
    r = Run
    result = await session.execute(
        update(r)
        .where(
            col(r.id) == run_id,
            col(r.tenant_id) == tenant_id,
            col(r.status).in_(("queued", "retrying")),
        )
        .values(
            status="cancelled",
            finished_at=now,
            cancel_requested=True,
            next_attempt_at=None,
            waiting_reason=None,
        )
        .returning(col(r.id))
        .execution_options(synchronize_session=False)
    )
    return result.first() is not None


async def ask_to_stop(session: AsyncSession, tenant_id: str, run_id: str) -> bool:
    """Ask a running run to stop at its next page boundary; whether it was running."""
    r = Run
    result = await session.execute(
        update(r)
        .where(col(r.id) == run_id, col(r.tenant_id) == tenant_id, col(r.status) == "running")
        .values(cancel_requested=True)
        .returning(col(r.id))
        .execution_options(synchronize_session=False)
    )
    return result.first() is not None


_RUN = metadata.tables["run"]
_SHOWN = [_RUN.c[name] for name in SHOWN_COLUMNS]
_READ_FOR_TENANT = select(*_SHOWN).where(
    _RUN.c.id == bindparam("run_id"), _RUN.c.tenant_id == bindparam("tenant_id")
)
_READ_MANY = select(*_SHOWN).where(_RUN.c.id.in_(bindparam("run_ids", expanding=True)))


async def read_for_tenant(
    quick: QuickStatements, tenant_id: str, run_id: str
) -> Mapping[Any, Any] | None:
    """The columns a response shows of one run, in one Core statement built once: the
    read path of `GET /v1/runs/{id}` (no ORM session, no checkpoint or options, which
    can be large; on PostgreSQL straight on the driver, `QuickStatements`;
    bench/api.py)."""
    params = {"run_id": run_id, "tenant_id": tenant_id}
    return await quick.first(_READ_FOR_TENANT, params, retry=True)


async def read_many(connection: AsyncConnection, run_ids: Collection[str]) -> list[RowMapping]:
    """`read_for_tenant` for many runs at once, whatever their tenant (the live-progress
    hub reads every followed run in one statement)."""
    if not run_ids:
        return []
    result = await connection.execute(_READ_MANY, {"run_ids": list(run_ids)})
    return list(result.mappings())


async def get(session: AsyncSession, run_id: str) -> Run | None:
    return await session.get(Run, run_id, populate_existing=True)


_TASK = metadata.tables["task"]
_ACTIVE = _RUN.c.status.in_([literal_column(f"'{status}'") for status in ACTIVE_STATUSES])
_TASK_AND_ACTIVE = (
    select(_TASK.c.source.label("task_source"), *_SHOWN)
    .select_from(_TASK.outerjoin(_RUN, and_(_RUN.c.task_id == _TASK.c.id, _ACTIVE)))
    .where(_TASK.c.id == bindparam("task_id"), _TASK.c.tenant_id == bindparam("tenant_id"))
)
"""The task's `source` and its active run's shown columns (all None without one): what
a trigger reads, in one statement. The statuses are written out, not bound, so the
statement has no list parameter (asyncpg would need an expanding bind for one)."""


async def task_and_active(db: Statements, tenant_id: str, task_id: str) -> Mapping[Any, Any] | None:
    """None: no such task of this tenant."""
    return await db.first(_TASK_AND_ACTIVE, {"task_id": task_id, "tenant_id": tenant_id})


async def insert_unless_active(db: Statements, run: Run) -> Mapping[Any, Any] | None:
    """Insert `run` and return its shown columns, or None when its task already has an
    active run (the partial unique index decides, so racing API processes still make
    one): one statement, with no savepoint to recover from a unique violation."""
    return await db.first(_INSERT_UNLESS_ACTIVE, run.model_dump())


async def insert_many_unless_active(
    session: AsyncSession, template: Run, rows: Sequence[RunRow]
) -> list[tuple[str, str]]:
    """`insert_unless_active` for many runs in one statement: each row's `RunRow` fields,
    every other column `template`'s. Returns (run id, task id) of the runs inserted;
    a task that already had an active run is left out."""
    if not rows:
        return []
    params = template.model_dump(exclude=set(RunRow._fields))
    for index, row in enumerate(rows):
        params.update({f"{name}_{index}": value for name, value in row._asdict().items()})
    result = await session.execute(_insert_many(len(rows)), params)
    return [(run_id, task_id) for run_id, task_id in result]


class RunRow(NamedTuple):
    """What differs between the runs of one `insert_many_unless_active`."""

    id: str
    task_id: str
    tenant_id: str
    options: dict[str, Any]


def _insert_unless_active(
    rows: int, per_row: Collection[str], returning: list[Column[Any]]
) -> TextualSelect:
    """Written out, because PostgreSQL and SQLite spell this insert the same (multi-row
    VALUES included) while SQLAlchemy builds it only per database."""
    columns = list(metadata.tables["run"].columns)
    values, binds = values_rows(columns, rows, per_row)
    sql = (
        f"INSERT INTO run ({', '.join(column.name for column in columns)}) "  # noqa: S608
        f"VALUES {values} ON CONFLICT (task_id) WHERE {ACTIVE_SQL} DO NOTHING "
        f"RETURNING {', '.join(column.name for column in returning)}"
    )
    return text(sql).bindparams(*binds).columns(*returning)


_INSERT_UNLESS_ACTIVE = _insert_unless_active(1, (), _SHOWN)


@functools.lru_cache(maxsize=64)
def _insert_many(rows: int) -> TextualSelect:
    """One statement per batch size, built once: SQLAlchemy and the driver then cache
    its compiled and prepared forms."""
    return _insert_unless_active(rows, RunRow._fields, [_RUN.c.id, _RUN.c.task_id])


async def page_for_task(
    session: AsyncSession, task_id: str, before_id: str | None, limit: int
) -> Sequence[Run]:
    query = select(Run).where(col(Run.task_id) == task_id)
    if before_id is not None:
        query = query.where(col(Run.id) < before_id)
    result = await session.execute(query.order_by(col(Run.id).desc()).limit(limit + 1))
    return result.scalars().all()


async def orphans(
    session: AsyncSession, now: datetime, queued_before: datetime, limit: int = 500
) -> Sequence[Run]:
    """Active runs no worker is known to be on: expired leases, overdue retries, and
    queued runs due long enough ago that their job may have been lost with Redis (a
    queued run with a not-before time, `next_attempt_at`, is due from then on)."""
    queued_since = func.coalesce(col(Run.next_attempt_at), col(Run.created_at))
    result = await session.execute(
        select(Run)
        .where(
            or_(
                and_(col(Run.status) == "queued", queued_since < queued_before),
                and_(col(Run.status) == "retrying", col(Run.next_attempt_at) <= now),
                and_(
                    col(Run.status) == "running",
                    or_(col(Run.lease_expires_at).is_(None), col(Run.lease_expires_at) < now),
                ),
            )
        )
        .order_by(col(Run.id))
        .limit(limit)
    )
    return result.scalars().all()


class QueueStats(NamedTuple):
    """Runs waiting for a worker now (queued and due, or retrying and due), the moment
    the longest-waiting of them became due, and the active runs by status."""

    waiting: int
    oldest_due: datetime | None
    active: dict[str, int]


async def queue_stats(session: AsyncSession, now: datetime) -> QueueStats:
    """Two indexed reads (`ix_run_status`) for the metrics' queue gauges, at scrape time."""
    due_since = func.coalesce(col(Run.next_attempt_at), col(Run.created_at))
    waiting = await session.execute(
        select(func.count(), func.min(due_since)).where(
            col(Run.status).in_(("queued", "retrying")),
            or_(col(Run.next_attempt_at).is_(None), col(Run.next_attempt_at) <= now),
        )
    )
    count, oldest = waiting.one()
    by_status = await session.execute(
        select(col(Run.status), func.count())
        .where(col(Run.status).in_(ACTIVE_STATUSES))
        .group_by(col(Run.status))
    )
    active = {status: 0 for status in ACTIVE_STATUSES}
    active.update({status: int(count) for status, count in by_status})
    return QueueStats(int(count), oldest, active)
