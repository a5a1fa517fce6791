from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import TextualSelect, and_, bindparam, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
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
    statement = select(Run).from_statement(_INSERT_UNLESS_ACTIVE)
    return (await session.scalars(statement, run.model_dump())).one_or_none()


def _insert_unless_active() -> TextualSelect:
    """Written out, because PostgreSQL and SQLite spell this insert the same while
    SQLAlchemy builds it only per database."""
    columns = list(metadata.tables["run"].columns)
    names = ", ".join(column.name for column in columns)
    values = ", ".join(f":{column.name}" for column in columns)
    sql = (
        f"INSERT INTO run ({names}) VALUES ({values}) "  # noqa: S608 - constant SQL
        f"ON CONFLICT (task_id) WHERE {ACTIVE_SQL} DO NOTHING RETURNING {names}"
    )
    binds = [bindparam(column.name, type_=column.type) for column in columns]
    return text(sql).bindparams(*binds).columns(*columns)


_INSERT_UNLESS_ACTIVE = _insert_unless_active()


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
