from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from service.models.types import UTCDateTime, utcnow


class IdempotencyRecord(SQLModel, table=True):
    """A request made with `Idempotency-Key`: its fingerprint and, once done, its response.

    Scoped to the tenant and the endpoint (method + path), kept 24 hours.
    """

    __tablename__ = "idempotency_key"

    tenant_id: str = Field(
        foreign_key="tenant.id", primary_key=True, max_length=40, ondelete="CASCADE"
    )
    scope: str = Field(primary_key=True, max_length=300)
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)
    state: str = Field(default="in_flight", max_length=20)
    status_code: int | None = None
    body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    headers: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
