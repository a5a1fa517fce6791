"""The events feed (`GET /v1/events`) and retention."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from service.db import SessionMaker, transaction
from service.errors import InvalidInput
from service.models import Event
from service.models.types import utcnow
from service.notifications import repository
from service.notifications.catalog import EVENT_TYPES
from service.notifications.schemas import EventFeed, EventOut
from service.notifications.webhooks import repository as webhooks

log = logging.getLogger(__name__)

PRUNE_BATCH = 5_000
"""Events deleted per transaction: short transactions, whatever the backlog."""
PRUNE_INTERVAL_SECONDS = 3600.0


def to_out(event: Event) -> EventOut:
    return EventOut(
        id=event.id, seq=event.seq, type=event.type, timestamp=event.created_at, data=event.data
    )


async def feed(
    session: AsyncSession,
    tenant_id: str,
    *,
    after: int,
    types: Sequence[str],
    task_id: str | None,
    user_id: str | None,
    limit: int,
) -> EventFeed:
    """The tenant's events after `after`, oldest first. The cursor is exact: a tenant's
    events commit in `seq` order (`outbox`), so none can appear later below it."""
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput.at(["query", "type"], f"unknown event type(s): {', '.join(unknown)}")
    events = await repository.page(
        session,
        tenant_id,
        after=after,
        types=types,
        task_id=task_id,
        user_id=user_id,
        limit=limit,
    )
    items = [to_out(event) for event in events]
    return EventFeed(items=items, next_after=items[-1].seq if items else after)


async def prune_once(sessionmaker: SessionMaker, retention_days: float) -> int:
    """Delete every event, and every finished webhook delivery, older than the
    retention, a batch per transaction; returns how many events."""
    before = utcnow() - timedelta(days=retention_days)
    await _prune(sessionmaker, webhooks.prune, before)
    return await _prune(sessionmaker, repository.prune, before)


async def _prune(
    sessionmaker: SessionMaker,
    prune: Callable[[AsyncSession, datetime, int], Awaitable[int]],
    before: datetime,
) -> int:
    total = 0
    while True:
        async with transaction(sessionmaker) as session:
            deleted = await prune(session, before, PRUNE_BATCH)
        total += deleted
        if deleted < PRUNE_BATCH:
            return total


async def prune_forever(sessionmaker: SessionMaker, retention_days: float) -> None:
    """Every worker prunes hourly (deleting is idempotent: several at once is harmless)."""
    while True:
        try:
            pruned = await prune_once(sessionmaker, retention_days)
            if pruned:
                log.info("pruned %d event(s) older than %s days", pruned, retention_days)
        except Exception:
            log.warning("event pruning failed; retrying", exc_info=True)
        await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
