from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from service.models.types import UTCDateTime, utcnow


class PageValidator(SQLModel, table=True):
    """The `ETag` / `Last-Modified` an upstream gave for one page URL of a task, sent back
    as `If-None-Match` / `If-Modified-Since` so an unchanged page costs a 304."""

    __tablename__ = "page_validator"

    task_id: str = Field(foreign_key="task.id", primary_key=True, max_length=40, ondelete="CASCADE")
    url_key: str = Field(primary_key=True, max_length=64)
    etag: str | None = Field(default=None, max_length=1000)
    last_modified: str | None = Field(default=None, max_length=100)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
