from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from service.models.types import BigInt, UTCDateTime, utcnow


class Tenant(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    event_seq: int = Field(default=0, sa_type=BigInt, sa_column_kwargs={"server_default": "0"})
    """The tenant's last event `seq` (see `Event`): bumped under the row's lock."""
    run_claims: int = Field(default=0, sa_type=BigInt, sa_column_kwargs={"server_default": "0"})
    """Runs of the tenant a worker started under the tenant's cap on running runs, ever:
    bumped by each such claim under the row's lock, so that a claim on PostgreSQL can
    tell whether another one committed while it counted (`runs.ledger.postgres`)."""


class ApiKey(SQLModel, table=True):
    """An API key; only a SHA-256 of the full key is kept, looked up by its public prefix."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenant.id", index=True, max_length=40, ondelete="CASCADE")
    prefix: str = Field(max_length=32, unique=True)
    key_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
