from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from service.models.types import BigInt, UTCDateTime, utcnow


class Webhook(SQLModel, table=True):
    """A subscribed endpoint (SPEC §7): where a tenant's events of `events` are POSTed.

    `after_seq` is its cursor into the tenant's events (`Event.seq`): every event up to it
    has its delivery row, made in the same transaction that moved the cursor
    (`service.notifications.webhooks.fanout`), so each event is fanned out to an
    endpoint exactly once. A new endpoint starts at the tenant's current `event_seq`.
    """

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenant.id", index=True, max_length=40, ondelete="CASCADE")
    url: str = Field(max_length=2048)
    events: list[str] = Field(sa_column=Column(JSON, nullable=False))
    """Event types delivered; `["*"]` is every type."""
    disabled: bool = False
    disabled_reason: str | None = Field(default=None, max_length=40)
    """`client` (PATCHed) or `failing` (disabled by the worker, with `webhook.disabled`)."""
    after_seq: int = Field(default=0, sa_type=BigInt)
    secret_ciphertext: str = Field(sa_column=Column(Text, nullable=False))
    previous_secret_ciphertext: str | None = Field(default=None, sa_column=Column(Text))
    """The secret before the last rotation, still signed with until `previous_secret_until`."""
    previous_secret_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failing_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """The first failed attempt since the last success; None while deliveries succeed."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
