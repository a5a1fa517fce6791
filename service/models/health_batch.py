from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from service.models.types import UTCDateTime, utcnow


class HealthBatch(SQLModel, table=True):
    """A `POST /v1/health/samples`: its accepted samples, kept here until the worker has
    stored them, then cleared.

    The database holds the batch, not Redis: the queue only carries its id, and a batch
    whose job was lost (Redis flushed, a worker killed) is re-sent by the reconciler
    (`sends`, `sent_at`) and resumes after its last committed chunk (`ingested`).
    """

    __tablename__ = "health_batch"
    __table_args__ = (
        Index("ix_health_batch_status_sent_at", "status", "sent_at"),
        Index("ix_health_batch_tenant_id_id", "tenant_id", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    user_id: str = Field(max_length=200)
    status: str = Field(default="pending", max_length=20)
    samples: list[list[Any]] | None = Field(default=None, sa_column=Column(JSON))
    """The accepted samples, normalized (`service.health.normalize.Normalized`, each a
    list in field order); null once done."""
    rejections: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    accepted: int = 0
    ingested: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    ignored: int = 0
    error: str | None = Field(default=None, max_length=500)
    sends: int = 0
    """Times the reconciler re-sent it: each re-send is a new job id."""
    sent_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
