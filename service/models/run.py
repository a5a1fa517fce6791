from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, text
from sqlmodel import Field, SQLModel

from service.models.types import BigInt, UTCDateTime, empty_dict, empty_list, utcnow

ACTIVE_STATUSES = ("queued", "running", "retrying")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
ACTIVE_SQL = "status IN ('queued', 'running', 'retrying')"


class Run(SQLModel, table=True):
    """One execution of a task; the row is the truth, the queue only carries its id.

    `checkpoint` is the next request to make: it commits with each page's records, so a
    run resumes after its last committed page. The partial unique index allows one
    active run per task, whatever the number of API processes racing to create one.
    """

    __table_args__ = (
        Index(
            "uq_run_one_active_per_task",
            "task_id",
            unique=True,
            sqlite_where=text(ACTIVE_SQL),
            postgresql_where=text(ACTIVE_SQL),
        ),
        Index("ix_run_task_id_id", "task_id", "id"),
        Index("ix_run_status", "status"),
    )

    id: str = Field(primary_key=True, max_length=40)
    task_id: str = Field(foreign_key="task.id", max_length=40, ondelete="CASCADE")
    tenant_id: str = Field(max_length=40)
    status: str = Field(default="queued", max_length=20)
    trigger: str = Field(default="manual", max_length=20)
    attempt: int = 1
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    pages: int = 0
    requests: int = 0
    not_modified: int = 0
    records_seen: int = Field(default=0, sa_type=BigInt)
    inserted: int = Field(default=0, sa_type=BigInt)
    updated: int = Field(default=0, sa_type=BigInt)
    unchanged: int = Field(default=0, sa_type=BigInt)
    rejected: int = Field(default=0, sa_type=BigInt)
    deleted: int = Field(default=0, sa_type=BigInt, sa_column_kwargs={"server_default": "0"})
    bytes: int = Field(default=0, sa_type=BigInt)
    samples_written: int = Field(
        default=0, sa_type=BigInt, sa_column_kwargs={"server_default": "0"}
    )
    """Health samples its records wrote (a task with a `health_mapping`)."""
    samples_rejected: int = Field(
        default=0, sa_type=BigInt, sa_column_kwargs={"server_default": "0"}
    )
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    attempts: list[dict[str, Any]] = Field(
        default_factory=empty_list, sa_column=Column(JSON, nullable=False)
    )
    checkpoint: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    options: dict[str, Any] = Field(
        default_factory=empty_dict, sa_column=Column(JSON, nullable=False)
    )
    cancel_requested: bool = False
    waiting_reason: str | None = Field(default=None, max_length=40)
    """Why a due run is still not running: `tenant_concurrency_limit` while its tenant
    already runs `BACKSYNC_TENANT_MAX_RUNNING` runs (the worker's claim sets it, and
    clears it when the run starts)."""
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """A running run belongs to the worker holding an unexpired lease; the worker renews
    it while it works, and the reconciler hands an expired one to another worker."""
