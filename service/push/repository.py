from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import PushUrl


async def for_task(session: AsyncSession, task_id: str) -> Sequence[PushUrl]:
    result = await session.execute(
        select(PushUrl).where(col(PushUrl.task_id) == task_id).order_by(col(PushUrl.id).desc())
    )
    return result.scalars().all()


async def get(session: AsyncSession, task_id: str, push_url_id: str) -> PushUrl | None:
    result = await session.execute(
        select(PushUrl).where(col(PushUrl.id) == push_url_id, col(PushUrl.task_id) == task_id)
    )
    return result.scalar_one_or_none()


async def by_token_hash(session: AsyncSession, token_hash: str) -> PushUrl | None:
    result = await session.execute(select(PushUrl).where(col(PushUrl.token_hash) == token_hash))
    return result.scalar_one_or_none()


async def count_call(session: AsyncSession, push_url_id: str, now: datetime) -> None:
    """One more notification, counted in SQL so concurrent calls all count."""
    await session.execute(
        update(PushUrl)
        .where(col(PushUrl.id) == push_url_id)
        .values(call_count=col(PushUrl.call_count) + 1, last_called_at=now)
    )


async def remove(session: AsyncSession, push_url_id: str) -> None:
    await session.execute(delete(PushUrl).where(col(PushUrl.id) == push_url_id))
