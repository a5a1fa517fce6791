"""Fan-out: new events become delivery rows, exactly once per (endpoint, event).

Each endpoint keeps a cursor (`webhook.after_seq`) into its tenant's events. A pass
claims endpoints whose cursor is behind their tenant's `event_seq` with one UPDATE (a
write first, so the claim takes the rows: PostgreSQL `FOR UPDATE SKIP LOCKED`, so other
workers pass them by; SQLite: the write takes the database's lock, one claimer at a
time), then, in the same transaction, inserts a delivery for each matching event after
the cursor and moves the cursor past them. The deliveries and the cursor commit
together, so a crash anywhere leaves either both or neither, and the unique
(webhook_id, event_seq) would refuse a second copy anyway.

The cursor can move past events that are not visible yet only if they do not exist:
a tenant's events commit in `seq` order (`service.notifications.outbox`), so the
tenant's `event_seq`, read before the events, bounds a gap-free prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db import SessionMaker, transaction
from service.models import metadata
from service.models.types import utcnow
from service.notifications.outbox import EVENT, TENANT
from service.notifications.webhooks import messages
from service.notifications.webhooks.repository import DELIVERY

WEBHOOK: Table = metadata.tables["webhook"]

ENDPOINTS_PER_PASS = 50
EVENTS_PER_ENDPOINT = 500
"""Deliveries made for one endpoint per pass: a long backlog is fanned out in steps."""

_BEHIND = (
    select(WEBHOOK.c.id)
    .join_from(WEBHOOK, TENANT, TENANT.c.id == WEBHOOK.c.tenant_id)
    .where(WEBHOOK.c.disabled.is_(False), WEBHOOK.c.after_seq < TENANT.c.event_seq)
)
_ANY_BEHIND = _BEHIND.limit(1)
"""The idle pass: a read, so an idle worker takes no lock (on SQLite, the database's)."""
_CLAIM = (
    update(WEBHOOK)
    .where(
        WEBHOOK.c.id.in_(
            _BEHIND.limit(ENDPOINTS_PER_PASS)
            .with_for_update(of=WEBHOOK, skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(after_seq=WEBHOOK.c.after_seq)  # a write first: the claim takes the rows
    .returning(WEBHOOK.c.id, WEBHOOK.c.tenant_id, WEBHOOK.c.after_seq, WEBHOOK.c.events)
)
_MOVE = (
    update(WEBHOOK).where(WEBHOOK.c.id == bindparam("webhook_id")).values(after_seq=bindparam("to"))
)


@dataclass(frozen=True, slots=True)
class Pass:
    deliveries: int
    more: bool
    """Some endpoint had more events than one pass takes: run another pass at once."""


async def fan_out(sessionmaker: SessionMaker) -> Pass:
    """One pass: claim endpoints that are behind and make their deliveries."""
    async with transaction(sessionmaker) as session:
        if (await session.execute(_ANY_BEHIND)).first() is None:
            return Pass(0, False)
        claimed = (await session.execute(_CLAIM)).all()
        if not claimed:
            return Pass(0, False)
        now = utcnow()
        bounds = await _event_seqs(session, {row.tenant_id for row in claimed})
        bodies: dict[tuple[str, int], str] = {}
        rows: list[dict[str, Any]] = []
        moves: list[dict[str, Any]] = []
        more = False
        for endpoint in claimed:
            events = await _events_after(session, endpoint, bounds[endpoint.tenant_id])
            full = len(events) == EVENTS_PER_ENDPOINT
            more = more or full
            rows += [_delivery(endpoint, event, bodies, now) for event in events]
            to = events[-1].seq if full else bounds[endpoint.tenant_id]
            moves.append({"webhook_id": endpoint.id, "to": to})
        if rows:
            await session.execute(insert(DELIVERY), rows)
        await session.execute(_MOVE, moves)
    return Pass(len(rows), more)


async def _event_seqs(session: AsyncSession, tenants: set[str]) -> dict[str, int]:
    """Each tenant's last event seq, read after the claim: every event up to it has
    committed (its writer held the tenant row to its commit) and is visible to the
    statements that follow."""
    query = select(TENANT.c.id, TENANT.c.event_seq).where(TENANT.c.id.in_(tenants))
    return {tenant_id: seq for tenant_id, seq in await session.execute(query)}


async def _events_after(session: AsyncSession, endpoint: Any, bound: int) -> list[Any]:
    query = (
        select(EVENT.c.seq, EVENT.c.id, EVENT.c.type, EVENT.c.data, EVENT.c.created_at)
        .where(
            EVENT.c.tenant_id == endpoint.tenant_id,
            EVENT.c.seq > endpoint.after_seq,
            EVENT.c.seq <= bound,
        )
        .order_by(EVENT.c.seq)
        .limit(EVENTS_PER_ENDPOINT)
    )
    if messages.ALL_EVENTS not in endpoint.events:
        query = query.where(EVENT.c.type.in_(endpoint.events))
    return list((await session.execute(query)).all())


def _delivery(
    endpoint: Any, event: Any, bodies: dict[tuple[str, int], str], now: datetime
) -> dict[str, Any]:
    """The delivery of `event` to `endpoint`; an event's body is rendered once per pass,
    whatever the number of endpoints it goes to."""
    key = (endpoint.tenant_id, event.seq)
    if key not in bodies:
        bodies[key] = messages.body(event.id, event.type, event.created_at, event.data, event.seq)
    return messages.delivery_row(
        tenant_id=endpoint.tenant_id,
        webhook_id=endpoint.id,
        message_id=event.id,
        event_type=event.type,
        payload=bodies[key],
        due=now,
        event_seq=event.seq,
    )
