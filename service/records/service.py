"""Storing pages of records and reading the change feed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import Record
from service.models.types import utcnow
from service.pagination import decode_positions, encode_positions
from service.records import repository
from service.records.schemas import ChangeFeed, ChangeOut, RecordFeed, RecordOut
from service.sync.records import Row
from service.tasks.service import get_task


@dataclass(slots=True)
class PageCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(slots=True)
class PageComparison:
    """A page compared with what is stored: which keys would be written, and the counts."""

    final: dict[str, Row]
    changed: dict[str, bool]
    """Keys to write -> whether each is new."""
    counts: PageCounts


def last_copies(rows: list[Row]) -> tuple[dict[str, Row], PageCounts]:
    """The last copy of each key, and the counts of the earlier copies it supersedes
    (`unchanged` if equal to the last copy, else `updated`)."""
    final = {row.key: row for row in rows}
    counts = PageCounts()
    if len(final) < len(rows):
        for row in rows:
            last = final[row.key]
            if row is not last:
                counts.unchanged += row.hash == last.hash
                counts.updated += row.hash != last.hash
    return final, counts


async def compare_page(session: AsyncSession, task_id: str, rows: list[Row]) -> PageComparison:
    """Read-only: send keys and hashes, let the database answer with what changed."""
    final, counts = last_copies(rows)
    changed = await repository.changed_keys(
        session, task_id, [(key, row.hash) for key, row in final.items()]
    )
    counts.inserted += sum(changed.values())
    counts.updated += len(changed) - sum(changed.values())
    counts.unchanged += len(final) - len(changed)
    return PageComparison(final, changed, counts)


async def write_changes(session: AsyncSession, task_id: str, page: PageComparison) -> bool:
    """Write what `compare_page` found changed; False when the task no longer exists.

    Only the run holding the task's active run writes its records, so the comparison
    cannot have gone stale in between.
    """
    if not page.changed:
        return True
    last_seq = await repository.allocate_seqs(session, task_id, len(page.changed))
    if last_seq is None:
        return False
    first_seq = last_seq - len(page.changed) + 1
    await repository.upsert(
        session,
        task_id,
        [
            (key, page.final[key].data, page.final[key].hash, first_seq + i)
            for i, key in enumerate(page.changed)
        ],
        utcnow(),
    )
    return True


async def store_page(session: AsyncSession, task_id: str, rows: list[Row]) -> PageCounts | None:
    """Compare and write a page in one go (for pages that are expected to change);
    None when the task no longer exists.

    PostgreSQL does it in one statement: compare, reserve seqs, upsert, count.
    """
    if not repository.writes_pages_in_one_statement(session):
        page = await compare_page(session, task_id, rows)
        return page.counts if await write_changes(session, task_id, page) else None
    final, counts = last_copies(rows)
    if not final:
        return counts
    rows_out = [(key, row.data, row.hash) for key, row in final.items()]
    written = await repository.write_page(session, task_id, rows_out, utcnow())
    if written is None:
        return None
    inserted, changed_count = written
    counts.inserted += inserted
    counts.updated += changed_count - inserted
    counts.unchanged += len(final) - changed_count
    return counts


async def change_feed(
    session: AsyncSession, tenant_id: str, task_id: str, after: int, limit: int
) -> RecordFeed:
    task = await get_task(session, tenant_id, task_id)
    records = await repository.feed(session, task.id, after, limit)
    return RecordFeed(
        items=[RecordOut(**_item_fields(record)) for record in records],
        next_after=records[-1].seq if records else after,
    )


async def user_changes(
    session: AsyncSession, tenant_id: str, user_id: str, after: str | None, limit: int
) -> ChangeFeed:
    """The change feed across the user's tasks, from a cursor of per-task positions.

    Records come in (seq, task_id) order, so what each task contributes is a prefix of
    what it has after its position, and moving each position to the last seq returned
    skips and repeats nothing, whatever commits meanwhile. Seqs are per task (a global
    counter would serialise every page of every task), hence a vector, not one number.
    """
    positions = decode_positions(after, ["query", "after"])
    records = await repository.user_changes(session, tenant_id, user_id, positions, limit)
    if not records:  # the same cursor back, to poll with
        return ChangeFeed(items=[], next_after=after or encode_positions({}))
    return ChangeFeed(
        items=[ChangeOut(task_id=record.task_id, **_item_fields(record)) for record in records],
        next_after=encode_positions(positions | {record.task_id: record.seq for record in records}),
    )


def _item_fields(record: Record) -> dict[str, Any]:
    """What a feed item shows of a stored record (the key and data as JSON again)."""
    return {
        "key": orjson.loads(record.key),
        "data": orjson.loads(record.data),
        "seq": record.seq,
        "updated_at": record.updated_at,
    }
