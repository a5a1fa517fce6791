from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, false
from sqlmodel import Field, SQLModel

from service.models.types import BigInt, UTCDateTime, utcnow


class HealthSample(SQLModel, table=True):
    """A health sample (SPEC §6), one per (tenant, user, source, client id).

    The client's own id is the key, so a phone re-sending what it sent before writes
    nothing new. `value` is in the type's canonical unit (`service.health.types`).

    A deleted sample stays as a tombstone that keeps only its identity (and type): the
    change feed must carry the deletion to other devices, and a stale copy of the sample
    arriving later must find something to lose to. Its data is cleared: a user who
    deletes a reading expects it gone.

    `seq` numbers the user's changes (`health_user.sample_seq`, bumped under that row's
    lock), so one user's changes commit in `seq` order. No foreign keys: PostgreSQL
    would check them row by row in every bulk upsert (as for `record`).
    """

    __tablename__ = "health_sample"
    __table_args__ = (
        Index("uq_health_sample_tenant_id_user_id_seq", "tenant_id", "user_id", "seq", unique=True),
        Index(
            "ix_health_sample_tenant_id_user_id_type_start_at",
            "tenant_id",
            "user_id",
            "type",
            "start_at",
        ),
    )

    tenant_id: str = Field(primary_key=True, max_length=40)
    user_id: str = Field(primary_key=True, max_length=200)
    source: str = Field(primary_key=True, max_length=100)
    id: str = Field(primary_key=True, max_length=200)
    type: str | None = Field(default=None, max_length=60)
    value: float | None = None
    unit: str | None = Field(default=None, max_length=20)
    start_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    end_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    tz_offset_minutes: int | None = None
    timezone: str | None = Field(default=None, max_length=64)
    device: str | None = Field(default=None, max_length=200)
    recording_method: str | None = Field(default=None, max_length=20)
    metadata_: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON))
    stage: str | None = Field(default=None, max_length=20)
    """`metadata.stage` of a category sample (sleep), as a column for the daily summary."""
    modified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    deleted: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    hash: str = Field(max_length=32)
    seq: int = Field(sa_type=BigInt)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
