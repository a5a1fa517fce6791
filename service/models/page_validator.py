from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from service.models.types import UTCDateTime, utcnow


class PageValidator(SQLModel, table=True):
    """The `ETag` / `Last-Modified` an upstream gave for one page URL of a task, sent back
    as `If-None-Match` / `If-Modified-Since` so an unchanged page costs a 304.

    `next_page` is where that page pointed: a 304 has no body to read the next cursor
    from, so the walk continues from what the page said last time.

    `digest` identifies the bytes the page's stored records came from, for every task,
    and `records_digest` those records as decoded (for pages whose bytes differ on every
    fetch); `records_seen` and `rejected` are that page's counts, reported again when the
    same bytes or records come back (`service.sync.conditional`).
    """

    __tablename__ = "page_validator"

    task_id: str = Field(foreign_key="task.id", primary_key=True, max_length=40, ondelete="CASCADE")
    url_key: str = Field(primary_key=True, max_length=64)
    etag: str | None = Field(default=None, max_length=1000)
    last_modified: str | None = Field(default=None, max_length=100)
    next_page: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    digest: str | None = Field(default=None, max_length=32)
    records_seen: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    rejected: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    records_digest: str | None = Field(default=None, max_length=32)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
