from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from service.models.types import BigInt, UTCDateTime, utcnow


class Event(SQLModel, table=True):
    """One notification (SPEC §7), written in the same transaction as the change that
    causes it: the outbox every consumer (the feed, webhooks) reads.

    `seq` counts per tenant and is reserved from `tenant.event_seq` under that row's lock
    (`service.notifications.outbox`), so a tenant's events commit in `seq` order and a
    reader that has seen `seq` N can never later find an event below N: the feed's cursor
    is stable without any time window.
    """

    __table_args__ = (
        Index("ix_event_tenant_id_task_id_seq", "tenant_id", "task_id", "seq"),
        Index("ix_event_created_at", "created_at"),
    )

    tenant_id: str = Field(
        foreign_key="tenant.id", primary_key=True, max_length=40, ondelete="CASCADE"
    )
    seq: int = Field(sa_type=BigInt, primary_key=True, sa_column_kwargs={"autoincrement": False})
    id: str = Field(max_length=40, unique=True)
    type: str = Field(max_length=40)
    task_id: str | None = Field(default=None, max_length=40)
    user_id: str | None = Field(default=None, max_length=200)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
