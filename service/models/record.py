from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Text, false
from sqlmodel import Field, SQLModel

from service.models.types import BigInt, UTCDateTime, utcnow


class Record(SQLModel, table=True):
    """A synced record, keyed per task.

    `key` is the canonical JSON of the primary key (a scalar, or a list for compound
    keys), so `1` and `"1"` stay distinct. `data` holds the record's canonical JSON
    text as hashed: it is written once and never re-serialised.

    No foreign key to `task`: PostgreSQL would check it row by row on every insert (a
    third of the bulk upsert's cost). Orphans cannot appear: a page's records are
    written only after its seq allocation row-locked the task, and deleting a task
    deletes its records in the same transaction (`tasks.repository.delete_records`).
    """

    __table_args__ = (Index("uq_record_task_id_seq", "task_id", "seq", unique=True),)

    task_id: str = Field(primary_key=True, max_length=40)
    key: str = Field(sa_column=Column(Text, primary_key=True))
    data: str = Field(sa_column=Column(Text, nullable=False))
    hash: str = Field(max_length=32)
    seq: int = Field(sa_type=BigInt)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    deleted: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    """Gone from the upstream (`detect_deletions`): kept, with a new seq, so the change
    feed can tell clients to remove it; a record that comes back is written again."""
    seen_run: str | None = Field(default=None, max_length=40)
    """The last run that saw this record (only runs that detect deletions mark it)."""
