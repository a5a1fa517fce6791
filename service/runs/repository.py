from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, Table, and_, bindparam, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter
from sqlmodel import col

from service.models import ACTIVE_STATUSES, Run, metadata
from service.models.run import ACTIVE_SQL


async def get_for_tenant(session: AsyncSession, tenant_id: str, run_id: str) -> Run | None:
    result = await session.execute(
        select(Run).where(col(Run.id) == run_id, col(Run.tenant_id) == tenant_id)
    )
    return result.scalar_one_or_none()


async def get(session: AsyncSession, run_id: str) -> Run | None:
    return await session.get(Run, run_id, populate_existing=True)


async def active_for_task(session: AsyncSession, task_id: str) -> Run | None:
    result = await session.execute(
        select(Run).where(col(Run.task_id) == task_id, col(Run.status).in_(ACTIVE_STATUSES))
    )
    return result.scalar_one_or_none()


async def insert_unless_active(session: AsyncSession, run: Run) -> Run | None:
    """Insert `run`, or nothing when its task already has an active run (the partial
    unique index decides, so racing API processes still make one): one statement, with
    no savepoint to recover from a unique violation."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(Run)
        .values(**run.model_dump())
        .on_conflict_do_nothing(index_elements=["task_id"], index_where=text(ACTIVE_SQL))
        .returning(Run)
    )
    return (await session.scalars(statement)).one_or_none()


async def page_for_task(
    session: AsyncSession, task_id: str, before_id: str | None, limit: int
) -> Sequence[Run]:
    query = select(Run).where(col(Run.task_id) == task_id)
    if before_id is not None:
        query = query.where(col(Run.id) < before_id)
    result = await session.execute(query.order_by(col(Run.id).desc()).limit(limit + 1))
    return result.scalars().all()


# The worker's statements are Core, not ORM: they run several times per run, and the ORM's
# bulk-update bookkeeping (session synchronisation, entity evaluation) cost more CPU than
# the statements themselves (bench/concurrency.py).
_RUN: Table = metadata.tables["run"]
_TASK: Table = metadata.tables["task"]


def _claimable(now: datetime | BindParameter[datetime]) -> Any:
    """Queued; retrying and due; or running under a lease that has expired."""
    c = _RUN.c
    return or_(
        c.status == "queued",
        and_(c.status == "retrying", c.next_attempt_at <= now),
        and_(
            c.status == "running",
            or_(c.lease_expires_at.is_(None), c.lease_expires_at < now),
        ),
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    """What the worker needs of a run it just took, and of its task: read back by the
    claim itself."""

    task_id: str
    attempt: int
    cancel_requested: bool
    checkpoint: dict[str, Any] | None
    options: dict[str, Any]
    attempts: list[dict[str, Any]]
    tenant_id: str
    source: dict[str, Any]
    auth_ciphertext: str | None
    limits: dict[str, Any]
    retry: dict[str, Any]
    watermark: Any
    record_seq: int


_CLAIMED_RUN = ("task_id", "attempt", "cancel_requested", "checkpoint", "options", "attempts")
_CLAIMED_TASK = (
    "tenant_id",
    "source",
    "auth_ciphertext",
    "limits",
    "retry",
    "watermark",
    "record_seq",
)


async def claim(
    session: AsyncSession, run_id: str, owner: str, now: datetime, lease_until: datetime
) -> Claimed | None:
    """Take the run's lease and mark it running; None when it is not ours to run.

    A write first (on SQLite the transaction holds the write lock from the start instead
    of failing to upgrade a read snapshot later), reading back what the worker needs;
    PostgreSQL reads the task in the same statement.
    """
    params = {"run_id": run_id, "owner": owner, "now": now, "lease_until": lease_until}
    claim_run, read_task = _claim_statements(session.get_bind().dialect.name)
    row: Sequence[Any] | None = (await session.execute(claim_run, params)).one_or_none()
    if read_task is not None and row is not None:  # SQLite: the task in a second statement
        task_id = row[_CLAIMED_RUN.index("task_id")]
        task_row = (await session.execute(read_task, {"task_id": task_id})).one_or_none()
        row = None if task_row is None else (*row, *task_row)
    if row is None:
        return None
    values = dict(zip((*_CLAIMED_RUN, *_CLAIMED_TASK), row, strict=True))
    values["cancel_requested"] = bool(values["cancel_requested"])
    values["options"] = values["options"] or {}
    values["attempts"] = list(values["attempts"] or [])
    return Claimed(**values)


@functools.cache
def _claim_statements(dialect: str) -> tuple[Executable, Executable | None]:
    """The claim, built once: constructing its CTE took longer than PostgreSQL ran it.
    PostgreSQL: one statement reading the task too; SQLite's RETURNING cannot see other
    tables, nor can its CTEs write, so it reads the task in a second one."""
    now = bindparam("now", type_=_RUN.c.started_at.type)
    claimed = (
        update(_RUN)
        .where(_RUN.c.id == bindparam("run_id"), _claimable(now))
        .values(
            status="running",
            lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("lease_until", type_=_RUN.c.lease_expires_at.type),
            next_attempt_at=None,
            started_at=func.coalesce(_RUN.c.started_at, now),
        )
        .returning(*(_RUN.c[name] for name in _CLAIMED_RUN))
    )
    task_columns = [_TASK.c[name] for name in _CLAIMED_TASK]
    if dialect == "postgresql":
        run = claimed.cte("claimed")
        return select(run, *task_columns).join_from(run, _TASK, _TASK.c.id == run.c.task_id), None
    return claimed, select(*task_columns).where(_TASK.c.id == bindparam("task_id"))


def _held(run_id: str, owner: str) -> Any:
    c = _RUN.c
    return and_(c.id == run_id, c.status == "running", c.lease_owner == owner)


async def add_page_progress(
    session: AsyncSession,
    run_id: str,
    owner: str,
    progress: dict[str, int],
    checkpoint: dict[str, Any] | None,
    lease_until: datetime,
) -> bool | None:
    """Add a page's counters, move the checkpoint and renew the lease; returns
    `cancel_requested`, or None when the lease is no longer ours (taken over, finished,
    cancelled while queued, or deleted): then nothing of this page may be written."""
    values: dict[str, Any] = {name: _RUN.c[name] + amount for name, amount in progress.items()}
    result = await session.execute(
        update(_RUN)
        .where(_held(run_id, owner))
        .values(**values, checkpoint=checkpoint, lease_expires_at=lease_until)
        .returning(_RUN.c.cancel_requested)
    )
    row = result.first()
    return None if row is None else bool(row[0])


async def renew_lease(
    session: AsyncSession, run_id: str, owner: str, lease_until: datetime
) -> bool:
    result = await session.execute(
        update(_RUN)
        .where(_held(run_id, owner))
        .values(lease_expires_at=lease_until)
        .returning(_RUN.c.id)
    )
    return result.scalar_one_or_none() is not None


async def finish(
    session: AsyncSession,
    run_id: str,
    owner: str | None,
    status: str,
    now: datetime,
    error: dict[str, Any] | None,
    attempts: list[dict[str, Any]] | None = None,
) -> str | None:
    """End the run (only the lease holder may, unless `owner` is None: a run that never
    started); `attempts`, when given, replaces the list. Returns the run's task id, or
    None when someone else already ended it."""
    condition = (
        _held(run_id, owner)
        if owner
        else and_(_RUN.c.id == run_id, _RUN.c.status.in_(ACTIVE_STATUSES))
    )
    values: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "error": error,
        "next_attempt_at": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if attempts is not None:
        values["attempts"] = attempts
    result = await session.execute(
        update(_RUN).where(condition).values(**values).returning(_RUN.c.task_id)
    )
    task_id: str | None = result.scalar_one_or_none()
    return task_id


async def schedule_retry(
    session: AsyncSession,
    run_id: str,
    owner: str,
    next_attempt_at: datetime,
    error: dict[str, Any],
    attempts: list[dict[str, Any]] | None,
    *,
    next_attempt: bool = True,
) -> int | None:
    """Park the run as `retrying` until `next_attempt_at`; `next_attempt=False` resumes
    the same attempt later (a host hold is not the run's failure). Returns the attempt
    number the run will resume with, or None when the lease is no longer ours."""
    values: dict[str, Any] = {
        "status": "retrying",
        "attempt": _RUN.c.attempt + (1 if next_attempt else 0),
        "next_attempt_at": next_attempt_at,
        "error": error,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if attempts is not None:
        values["attempts"] = attempts
    result = await session.execute(
        update(_RUN).where(_held(run_id, owner)).values(**values).returning(_RUN.c.attempt)
    )
    attempt: int | None = result.scalar_one_or_none()
    return attempt


async def orphans(
    session: AsyncSession, now: datetime, queued_before: datetime, limit: int = 500
) -> Sequence[Run]:
    """Active runs no worker is known to be on: expired leases, overdue retries, and
    queued runs old enough that their job may have been lost with Redis."""
    result = await session.execute(
        select(Run)
        .where(
            or_(
                and_(col(Run.status) == "queued", col(Run.created_at) < queued_before),
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


async def record_outcome(
    session: AsyncSession, task_id: str, succeeded: bool, now: datetime
) -> None:
    values: dict[str, Any] = (
        {"last_success_at": now, "consecutive_failures": 0}
        if succeeded
        else {"consecutive_failures": _TASK.c.consecutive_failures + 1}
    )
    await session.execute(update(_TASK).where(_TASK.c.id == task_id).values(**values))
