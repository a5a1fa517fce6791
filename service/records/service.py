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


async def store_page(
    session: AsyncSession, task_id: str, rows: list[Row], *, likely_changed: bool = False
) -> PageCounts | None:
    """Upsert a page by key; None when the task no longer exists.

    Two ways, chosen by what the previous page of the run did (`likely_changed`): send
    only keys and hashes, let the database answer with what changed, then write that —
    an unchanged page costs one cheap query and no write; or, when pages are changing
    (a first sync), send everything and let PostgreSQL compare and write in one
    statement. A key that occurs several times in one page is written once, with its
    last copy; the earlier copies count `unchanged` if equal to it, else `updated`.
    """
    final = {row.key: row for row in rows}  # the last copy of each key wins
    counts = PageCounts()
    if len(final) < len(rows):
        for row in rows:
            last = final[row.key]
            if row is not last:
                counts.unchanged += row.hash == last.hash
                counts.updated += row.hash != last.hash
    if not final:
        return counts
    if likely_changed and repository.writes_pages_in_one_statement(session):
        rows_out = [(key, row.data, row.hash) for key, row in final.items()]
        written = await repository.write_page(session, task_id, rows_out, utcnow())
        if written is None:
            return None
        inserted, changed_count = written
        counts.inserted += inserted
        counts.updated += changed_count - inserted
        counts.unchanged += len(final) - changed_count
        return counts
    changed = await repository.changed_keys(
        session, task_id, [(key, row.hash) for key, row in final.items()]
    )
    counts.inserted += sum(changed.values())
    counts.updated += len(changed) - sum(changed.values())
    counts.unchanged += len(final) - len(changed)
    if not changed:
        return counts
    last_seq = await repository.allocate_seqs(session, task_id, len(changed))
    if last_seq is None:
        return None
    first_seq = last_seq - len(changed) + 1
    await repository.upsert(
        session,
        task_id,
        [(key, final[key].data, final[key].hash, first_seq + i) for i, key in enumerate(changed)],
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
