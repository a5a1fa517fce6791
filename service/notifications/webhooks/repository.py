"""The SQL of the webhook API: endpoints and their deliveries, always by tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, Table, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import Tenant, Webhook, WebhookDelivery, metadata

DELIVERY: Table = metadata.tables["webhook_delivery"]
DISABLED = "webhook disabled"


async def get(session: AsyncSession, tenant_id: str, webhook_id: str) -> Webhook | None:
    webhook = await session.get(Webhook, webhook_id)
    return webhook if webhook is not None and webhook.tenant_id == tenant_id else None


async def list_for(session: AsyncSession, tenant_id: str) -> Sequence[Webhook]:
    query = select(Webhook).where(col(Webhook.tenant_id) == tenant_id).order_by(col(Webhook.id))
    return (await session.scalars(query)).all()


async def count(session: AsyncSession, tenant_id: str) -> int:
    query = select(func.count()).select_from(Webhook).where(col(Webhook.tenant_id) == tenant_id)
    return int((await session.execute(query)).scalar_one())


async def event_seq(session: AsyncSession, tenant_id: str) -> int:
    """The tenant's last event seq: where a new (or re-enabled) endpoint's cursor starts."""
    query = select(col(Tenant.event_seq)).where(col(Tenant.id) == tenant_id)
    return int((await session.execute(query)).scalar_one())


async def remove(session: AsyncSession, webhook_id: str) -> None:
    """Delete the endpoint; its deliveries go with it (ON DELETE CASCADE)."""
    await session.execute(delete(Webhook).where(col(Webhook.id) == webhook_id))


async def end_pending(session: AsyncSession, webhook_id: str) -> None:
    """A disabled endpoint's pending deliveries fail now instead of being retried for a
    day (a ping, an explicit request, still goes out)."""
    await session.execute(
        update(DELIVERY)
        .where(
            DELIVERY.c.webhook_id == webhook_id,
            DELIVERY.c.status == "pending",
            DELIVERY.c.event_seq.is_not(None),
        )
        .values(status="failed", next_attempt_at=None, last_error=DISABLED)
    )


async def prune(session: AsyncSession, before: datetime, batch: int) -> int:
    """Delete up to `batch` finished deliveries made before `before`; returns how many."""
    old = (
        select(DELIVERY.c.id)
        .where(DELIVERY.c.created_at < before, DELIVERY.c.status != "pending")
        .limit(batch)
    )
    result = await session.execute(delete(DELIVERY).where(DELIVERY.c.id.in_(old)))
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


async def add_delivery(session: AsyncSession, row: dict[str, Any]) -> WebhookDelivery:
    await session.execute(insert(DELIVERY), [row])
    delivery = await session.get(WebhookDelivery, row["id"])
    assert delivery is not None
    return delivery


async def deliveries(
    session: AsyncSession,
    webhook_id: str,
    *,
    status: str | None,
    before: str | None,
    limit: int,
) -> Sequence[WebhookDelivery]:
    """Newest first (ids are time-ordered); `limit + 1` rows, to tell if there are more."""
    query = select(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == webhook_id)
    if status is not None:
        query = query.where(col(WebhookDelivery.status) == status)
    if before is not None:
        query = query.where(col(WebhookDelivery.id) < before)
    query = query.order_by(col(WebhookDelivery.id).desc()).limit(limit + 1)
    return (await session.scalars(query)).all()
