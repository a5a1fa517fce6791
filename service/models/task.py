from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from service.models.types import BigInt, UTCDateTime, empty_list, utcnow


class Task(SQLModel, table=True):
    """A registered sync task.

    `source` is stored without credentials; `auth_ciphertext` holds the Fernet-encrypted
    `source.auth`. `record_seq` is the task's change-feed counter: bumping it inside each
    page's transaction row-locks the task, so seqs commit in order.
    """

    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenant.id", index=True, max_length=40, ondelete="CASCADE")
    name: str = Field(max_length=200)
    user_id: str | None = Field(default=None, index=True, max_length=200)
    kind: str = Field(default="http", max_length=20)
    source: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    auth_ciphertext: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    schedule: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    retry: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    limits: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    health_mapping: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    tags: list[str] = Field(default_factory=empty_list, sa_column=Column(JSON, nullable=False))
    paused: bool = False
    paused_reason: str | None = Field(default=None, max_length=40)
    """`client` (paused through the API) or `consecutive_failures` (paused by the worker
    after `BACKSYNC_AUTO_PAUSE_AFTER_FAILURES` failed runs in a row)."""
    consecutive_failures: int = 0
    auth_failed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """When the upstream last refused the task's credentials (401/403) in the current
    failure streak: `task.auth_failed` is emitted once per streak, and a success or new
    credentials end the streak."""
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    next_run_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    """The task's next schedule slot; null when it has no schedule or is paused, so the
    scheduler's one indexed query finds only what it may start."""
    skipped_runs: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """Schedule slots skipped because the previous run was still active (WorkManager's
    KEEP policy: a slot never stacks a second run)."""
    debounce_seconds: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """A push starts its run no earlier than this after the burst's first push, so a
    burst of notifications gives one run (`service.push`)."""
    watermark: Any | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    record_seq: int = Field(default=0, sa_type=BigInt)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TaskTag(SQLModel, table=True):
    """One row per tag, so `?tag=` filters with an index on every database."""

    __tablename__ = "task_tag"

    task_id: str = Field(foreign_key="task.id", primary_key=True, max_length=40, ondelete="CASCADE")
    tag: str = Field(primary_key=True, max_length=100, index=True)
