from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import ACTIVE_STATUSES, Run, Task


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


async def page_for_task(
    session: AsyncSession, task_id: str, before_id: str | None, limit: int
) -> Sequence[Run]:
    query = select(Run).where(col(Run.task_id) == task_id)
    if before_id is not None:
        query = query.where(col(Run.id) < before_id)
    result = await session.execute(query.order_by(col(Run.id).desc()).limit(limit + 1))
    return result.scalars().all()


def _claimable(now: datetime) -> Any:
    """Queued; retrying and due; or running under a lease that has expired."""
    return or_(
        col(Run.status) == "queued",
        and_(col(Run.status) == "retrying", col(Run.next_attempt_at) <= now),
        and_(
            col(Run.status) == "running",
            or_(col(Run.lease_expires_at).is_(None), col(Run.lease_expires_at) < now),
        ),
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    """What the worker needs of a run it just took: read back by the claim itself."""

    task_id: str
    attempt: int
    cancel_requested: bool
    checkpoint: dict[str, Any] | None
    options: dict[str, Any]
    attempts: list[dict[str, Any]]


async def claim(
    session: AsyncSession, run_id: str, owner: str, now: datetime, lease_until: datetime
) -> Claimed | None:
    """Take the run's lease and mark it running; None when it is not ours to run.

    One statement: a write first (on SQLite the transaction holds the write lock from the
    start instead of failing to upgrade a read snapshot later), reading back what the
    worker needs.
    """
    result = await session.execute(
        update(Run)
        .where(col(Run.id) == run_id, _claimable(now))
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=lease_until,
            next_attempt_at=None,
            started_at=func.coalesce(col(Run.started_at), now),
        )
        .returning(
            col(Run.task_id),
            col(Run.attempt),
            col(Run.cancel_requested),
            col(Run.checkpoint),
            col(Run.options),
            col(Run.attempts),
        )
    )
    row = result.one_or_none()
    if row is None:
        return None
    return Claimed(row[0], row[1], bool(row[2]), row[3], row[4] or {}, list(row[5] or []))


def _held(run_id: str, owner: str) -> Any:
    return and_(col(Run.id) == run_id, col(Run.status) == "running", col(Run.lease_owner) == owner)


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
    values: dict[str, Any] = {
        name: getattr(Run, name) + amount for name, amount in progress.items()
    }
    result = await session.execute(
        update(Run)
        .where(_held(run_id, owner))
        .values(**values, checkpoint=checkpoint, lease_expires_at=lease_until)
        .returning(col(Run.cancel_requested))
    )
    row = result.first()
    return None if row is None else bool(row[0])


async def renew_lease(
    session: AsyncSession, run_id: str, owner: str, lease_until: datetime
) -> bool:
    result = await session.execute(
        update(Run)
        .where(_held(run_id, owner))
        .values(lease_expires_at=lease_until)
        .returning(col(Run.id))
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
        else and_(col(Run.id) == run_id, col(Run.status).in_(ACTIVE_STATUSES))
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
        update(Run).where(condition).values(**values).returning(col(Run.task_id))
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
        "attempt": col(Run.attempt) + (1 if next_attempt else 0),
        "next_attempt_at": next_attempt_at,
        "error": error,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if attempts is not None:
        values["attempts"] = attempts
    result = await session.execute(
        update(Run).where(_held(run_id, owner)).values(**values).returning(col(Run.attempt))
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
        else {"consecutive_failures": col(Task.consecutive_failures) + 1}
    )
    await session.execute(update(Task).where(col(Task.id) == task_id).values(**values))
