"""Storing pages of records and reading the change feed."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from service.models.types import utcnow
from service.records import repository
from service.records.schemas import RecordFeed, RecordOut
from service.sync.records import Row
from service.tasks.service import get_task


@dataclass(slots=True)
class PageCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


async def store_page(session: AsyncSession, task_id: str, rows: list[Row]) -> PageCounts | None:
    """Upsert a page by key; None when the task no longer exists.

    Counting follows the page's order, as if each record were written in turn (a key
    seen twice in one page: the first copy is inserted, a differing second one updates
    it), but only the last copy of each key is written, once.
    """
    counts = PageCounts()
    stored = await repository.existing_hashes(session, task_id, [row.key for row in rows])
    final: dict[str, Row] = {}
    for row in rows:
        previous = final[row.key].hash if row.key in final else stored.get(row.key)
        if previous is None:
            counts.inserted += 1
        elif previous == row.hash:
            counts.unchanged += 1
        else:
            counts.updated += 1
        final[row.key] = row
    changed = [row for key, row in final.items() if stored.get(key) != row.hash]
    if not changed:
        return counts
    last_seq = await repository.allocate_seqs(session, task_id, len(changed))
    if last_seq is None:
        return None
    first_seq = last_seq - len(changed) + 1
    await repository.upsert(
        session,
        task_id,
        [(row.key, row.data, row.hash, first_seq + i) for i, row in enumerate(changed)],
        utcnow(),
    )
    return counts


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
