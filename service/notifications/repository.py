"""Reading the events outbox: the feed's page query and retention pruning."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import CursorResult, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import Event
from service.notifications.outbox import EVENT


async def page(
    session: AsyncSession,
    tenant_id: str,
    *,
    after: int,
    types: Sequence[str],
    task_id: str | None,
    user_id: str | None,
    limit: int,
) -> Sequence[Event]:
    """The tenant's events after `after`, in `seq` order (its primary key's)."""
    query = select(Event).where(col(Event.tenant_id) == tenant_id, col(Event.seq) > after)
    if types:
        query = query.where(col(Event.type).in_(types))
    if task_id is not None:
        query = query.where(col(Event.task_id) == task_id)
    if user_id is not None:
        query = query.where(col(Event.user_id) == user_id)
    result = await session.execute(query.order_by(col(Event.seq)).limit(limit))
    return result.scalars().all()


async def prune(session: AsyncSession, before: datetime, batch: int) -> int:
    """Delete up to `batch` events created before `before`; returns how many."""
    old = select(EVENT.c.tenant_id, EVENT.c.seq).where(EVENT.c.created_at < before).limit(batch)
    result = await session.execute(
        delete(EVENT).where(tuple_(EVENT.c.tenant_id, EVENT.c.seq).in_(old))
    )
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
