from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from service.models.types import BigInt, UTCDateTime, empty_list, utcnow


class WebhookDelivery(SQLModel, table=True):
    """One message to one endpoint and its attempts.

    `message_id` is the `webhook-id` header: the event's id (a `ping`'s own), the same on
    every attempt, so a receiver dedupes retries and redeliveries by it. `payload` is
    the exact body, so every attempt sends the same bytes. `next_attempt_at` is set
    while the delivery is `pending`: when it is due, and, once a sender has claimed it,
    when that claim lapses (a sender killed mid-request leaves it to be sent again).
    At most one delivery per (webhook, event): the unique constraint backs the fan-out's
    cursor. A ping has no `event_seq`.
    """

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_seq"),
        Index("ix_webhook_delivery_webhook_id_id", "webhook_id", "id"),
        Index("ix_webhook_delivery_next_attempt_at", "next_attempt_at"),
        Index("ix_webhook_delivery_created_at", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=40, ondelete="CASCADE")
    webhook_id: str = Field(foreign_key="webhook.id", max_length=40, ondelete="CASCADE")
    message_id: str = Field(max_length=40)
    event_seq: int | None = Field(default=None, sa_type=BigInt)
    event_type: str = Field(max_length=40)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", max_length=20)
    """`pending` (to be tried, or being tried), `succeeded`, `failed` (attempts spent)."""
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    attempt_log: list[dict[str, Any]] = Field(
        default_factory=empty_list, sa_column=Column(JSON, nullable=False)
    )
    """Each attempt: `{at, status_code, error, duration_ms}` (the last `LOG_LENGTH`)."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
