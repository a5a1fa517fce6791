from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlmodel import col
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import ACTIVE_STATUSES, Run, Task


async def get_for_tenant(session: AsyncSession, tenant_id: str, run_id: str) -> Run | None:
    result = await session.execute(select(Run).where(col(Run.id) == run_id, col(Run.tenant_id) == tenant_id))
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


async def claim(session: AsyncSession, run_id: str, now: datetime) -> Run | None:
    """Move a queued run to running; None when it is not queued (finished, cancelled, gone).

    The first statement is a write, so on SQLite the transaction holds the write lock
    from the start instead of failing to upgrade a read snapshot later.
    """
    result = await session.execute(
        update(Run)
        .where(col(Run.id) == run_id, col(Run.status).in_(("queued", "running")))
        .values(status="running")
        .returning(col(Run.id))
    )
    if result.scalar_one_or_none() is None:
        return None
    run = await get(session, run_id)
    if run is not None and run.started_at is None:
        run.started_at = now
    return run


async def add_page_progress(
    session: AsyncSession, run_id: str, progress: dict[str, int], checkpoint: dict[str, Any] | None
) -> bool | None:
    """Add a page's counters and move the checkpoint; returns `cancel_requested`,
    or None when the run is no longer running (deleted or finished elsewhere)."""
    values: dict[str, Any] = {name: getattr(Run, name) + amount for name, amount in progress.items()}
    result = await session.execute(
        update(Run)
        .where(col(Run.id) == run_id, col(Run.status) == "running")
        .values(**values, checkpoint=checkpoint)
        .returning(col(Run.cancel_requested))
    )
    row = result.first()
    return None if row is None else bool(row[0])


async def add_counts(session: AsyncSession, run_id: str, counts: dict[str, int]) -> None:
    if any(counts.values()):
        await session.execute(
            update(Run)
            .where(col(Run.id) == run_id)
            .values({name: getattr(Run, name) + amount for name, amount in counts.items()})
        )


async def finish(
    session: AsyncSession, run_id: str, status: str, now: datetime, error: dict[str, Any] | None
) -> Run | None:
    result = await session.execute(
        update(Run)
        .where(col(Run.id) == run_id, col(Run.status).in_(ACTIVE_STATUSES))
        .values(status=status, finished_at=now, error=error, next_attempt_at=None)
        .returning(col(Run.id))
    )
    if result.scalar_one_or_none() is None:
        return None
    return await get(session, run_id)


async def record_outcome(session: AsyncSession, task_id: str, succeeded: bool, now: datetime) -> None:
    values: dict[str, Any] = (
        {"last_success_at": now, "consecutive_failures": 0}
        if succeeded
        else {"consecutive_failures": Task.consecutive_failures + 1}
    )
    await session.execute(update(Task).where(col(Task.id) == task_id).values(**values))
