from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import ACTIVE_STATUSES, Run
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
