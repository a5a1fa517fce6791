"""Reading the change feed."""

from __future__ import annotations

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from service.records import repository
from service.records.schemas import RecordFeed, RecordOut
from service.tasks.service import get_task


async def change_feed(
    session: AsyncSession, tenant_id: str, task_id: str, after: int, limit: int
) -> RecordFeed:
    task = await get_task(session, tenant_id, task_id)
    records = await repository.feed(session, task.id, after, limit)
    return RecordFeed(
        items=[
            RecordOut(
                key=orjson.loads(record.key),
                data=orjson.loads(record.data),
                seq=record.seq,
                updated_at=record.updated_at,
            )
            for record in records
        ],
        next_after=records[-1].seq if records else after,
    )
