"""Reading the change feeds: one task's, and one user's across tasks."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import Record
from service.pagination import decode_positions, encode_positions
from service.records import repository
from service.records.schemas import ChangeFeed, ChangeOut, RecordFeed, RecordOut
from service.tasks.service import get_task


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
    Positions of tasks that are no longer the user's (deleted, given another user) are
    dropped, so the cursor only ever holds the user's current tasks.
    """
    given = decode_positions(after, ["query", "after"])
    tasks = await repository.user_task_ids(session, tenant_id, user_id)
    positions = {task_id: seq for task_id, seq in given.items() if task_id in tasks}
    records = await repository.user_changes(session, tenant_id, user_id, positions, limit)
    if not records:  # the same cursor back to poll with, less tasks that are gone
        same = positions == given and after
        return ChangeFeed(items=[], next_after=after if same else encode_positions(positions))
    return ChangeFeed(
        items=[ChangeOut(task_id=record.task_id, **_item_fields(record)) for record in records],
        next_after=encode_positions(positions | {record.task_id: record.seq for record in records}),
    )


def _item_fields(record: Record) -> dict[str, Any]:
    """What a feed item shows of a stored record (the key and data as JSON again)."""
    return {
        "key": orjson.loads(record.key),
        "data": None if record.deleted else orjson.loads(record.data),
        "deleted": record.deleted,
        "seq": record.seq,
        "updated_at": record.updated_at,
    }
