"""The events outbox: how any part of Backsync says something happened (SPEC §7).

An event is written in the same transaction as the change that causes it, by the code
that makes the change, through `append`: a process that dies right after a commit has
already written its events, and a rolled-back change leaves none. Consumers (the
`GET /v1/events` feed, webhook deliveries) read the `event` table; none is told
directly.

Each tenant's events are numbered by `tenant.event_seq`, bumped under that row's lock,
so one tenant's events commit in `seq` order (the lock is held to the commit, the way a
task's record seqs are). A reader that has seen `seq` N never finds a smaller one later.
The lock is taken last in every transaction that writes events, after the task and run
rows, the order every other writer takes those in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.ids import new_id
from service.models import metadata
from service.models.types import utcnow

EVENT: Table = metadata.tables["event"]
TENANT: Table = metadata.tables["tenant"]


@dataclass(frozen=True, slots=True)
class Computed:
    """A value in an event's `data` that the statement writing the event computes.

    PostgreSQL's ledger writes a run's success and its events in the one statement that
    commits the run's last page (a second statement in a transaction cost the worker
    about a third more CPU per run, bench/concurrency.py), before Python has seen the
    run's totals. The event's shape still comes from `catalog`; that statement fills in
    each top-level `Computed` value by its `name`. `append` takes none."""

    name: str


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; `task_id` and `user_id` are also in `data` (the feed filters
    by them). `only_if` names a boolean the writing statement computes (see `Computed`):
    the event is written only when it is true."""

    type: str
    data: dict[str, Any]
    task_id: str | None = None
    user_id: str | None = None
    id: str = field(default_factory=lambda: new_id("evt"))
    only_if: str | None = None


async def append(
    session: AsyncSession,
    tenant_id: str,
    events: Sequence[NewEvent],
    now: datetime | None = None,
) -> None:
    """Write `events` in the session's transaction, numbered after the tenant's last."""
    if not events:
        return
    count = len(events)
    reserved = await session.execute(
        update(TENANT)
        .where(TENANT.c.id == tenant_id)
        .values(event_seq=TENANT.c.event_seq + count)
        .returning(TENANT.c.event_seq - count)
    )
    base = reserved.scalar_one()
    at = now or utcnow()
    await session.execute(
        insert(EVENT),
        [
            {
                "tenant_id": tenant_id,
                "seq": base + n,
                "id": event.id,
                "type": event.type,
                "task_id": event.task_id,
                "user_id": event.user_id,
                "data": event.data,
                "created_at": at,
            }
            for n, event in enumerate(events, start=1)
        ],
    )
