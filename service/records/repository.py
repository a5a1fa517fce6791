"""Reading the change feed. Records are written only by the worker, through the run
ledger (`service.runs.ledger`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import Record


async def feed(session: AsyncSession, task_id: str, after: int, limit: int) -> Sequence[Record]:
    result = await session.execute(
        select(Record)
        .where(col(Record.task_id) == task_id, col(Record.seq) > after)
        .order_by(col(Record.seq))
        .limit(limit)
    )
    return result.scalars().all()
