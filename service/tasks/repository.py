from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import Record, Run, Task, TaskTag


async def get(session: AsyncSession, tenant_id: str, task_id: str) -> Task | None:
    result = await session.execute(
        select(Task).where(col(Task.id) == task_id, col(Task.tenant_id) == tenant_id)
    )
    return result.scalar_one_or_none()


async def get_by_id(session: AsyncSession, task_id: str) -> Task | None:
    return await session.get(Task, task_id)


async def by_name(session: AsyncSession, tenant_id: str, name: str) -> Task | None:
    result = await session.execute(
        select(Task).where(col(Task.tenant_id) == tenant_id, col(Task.name) == name)
    )
    return result.scalar_one_or_none()


async def page(
    session: AsyncSession,
    tenant_id: str,
    *,
    user_id: str | None,
    tag: str | None,
    paused: bool | None,
    before_id: str | None,
    limit: int,
) -> Sequence[Task]:
    query = select(Task).where(col(Task.tenant_id) == tenant_id)
    if user_id is not None:
        query = query.where(col(Task.user_id) == user_id)
    if tag is not None:
        tagged = select(col(TaskTag.task_id)).where(col(TaskTag.tag) == tag)
        query = query.where(col(Task.id).in_(tagged))
    if paused is not None:
        query = query.where(col(Task.paused) == paused)
    if before_id is not None:
        query = query.where(col(Task.id) < before_id)
    result = await session.execute(query.order_by(col(Task.id).desc()).limit(limit + 1))
    return result.scalars().all()


async def set_tags(session: AsyncSession, task_id: str, tags: list[str]) -> None:
    await session.execute(delete(TaskTag).where(col(TaskTag.task_id) == task_id))
    session.add_all([TaskTag(task_id=task_id, tag=tag) for tag in dict.fromkeys(tags)])


async def latest_runs(session: AsyncSession, task_ids: list[str]) -> dict[str, Run]:
    """The newest run of each task, in one query (ids are time-ordered)."""
    if not task_ids:
        return {}
    newest = (
        select(func.max(col(Run.id)))
        .where(col(Run.task_id).in_(task_ids))
        .group_by(col(Run.task_id))
    )
    rows = await session.execute(select(Run).where(col(Run.id).in_(newest)))
    return {run.task_id: run for run in rows.scalars()}


async def delete_records(session: AsyncSession, task_id: str) -> None:
    """Records have no foreign key to their task (PostgreSQL would check it row by row on
    every insert); a deleted task's records go with it here, after the task row is locked
    by its own deletion, so no page transaction can add more."""
    await session.execute(delete(Record).where(col(Record.task_id) == task_id))


async def schedule_stats(session: AsyncSession) -> tuple[int, datetime | None]:
    """Active scheduled tasks (with a next slot) and the soonest slot, for the scheduler
    lag gauge; one read of the `next_run_at` index."""
    row = (
        await session.execute(
            select(func.count(), func.min(col(Task.next_run_at))).where(
                col(Task.next_run_at).is_not(None)
            )
        )
    ).one()
    return int(row[0]), row[1]
