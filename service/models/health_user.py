from __future__ import annotations

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from service.models.types import BigInt, empty_list


class HealthUser(SQLModel, table=True):
    """Per (tenant, user): the health change feed's counter and the source priority.

    `sample_seq` is the user's last change `seq`, bumped under this row's lock and held
    to the commit, so one user's changes commit in `seq` order (a reader that has seen N
    never finds less later). Per user, not per tenant: the feed is read per user, and a
    tenant-wide counter would serialise every phone's ingest behind one row.
    """

    __tablename__ = "health_user"

    tenant_id: str = Field(
        foreign_key="tenant.id", primary_key=True, max_length=40, ondelete="CASCADE"
    )
    user_id: str = Field(primary_key=True, max_length=200)
    sample_seq: int = Field(default=0, sa_type=BigInt, sa_column_kwargs={"server_default": "0"})
    sources: list[str] = Field(default_factory=empty_list, sa_column=Column(JSON, nullable=False))
    """Source priority, highest first (`PUT /v1/health/users/{user_id}/sources`)."""
