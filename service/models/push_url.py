from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from service.models.types import UTCDateTime, utcnow


class PushUrl(SQLModel, table=True):
    """A secret URL (`/v1/push/{token}`) whose calls trigger a task.

    Only a SHA-256 of the token is kept (like API keys: 256 random bits need no
    stretching), unique so a call finds its row with one indexed lookup; the token
    itself is shown once, when the URL is created. The optional verification code
    (Fitbit's `verify`, Strava's `hub.verify_token`, Oura's `verification_token`) is
    kept hashed too: it is only ever compared. Deleting the row revokes the URL; the
    task's deletion takes its URLs with it (ON DELETE CASCADE).
    """

    __tablename__ = "push_url"

    id: str = Field(primary_key=True, max_length=40)
    task_id: str = Field(foreign_key="task.id", index=True, max_length=40, ondelete="CASCADE")
    tenant_id: str = Field(max_length=40)
    token_hash: str = Field(max_length=64, unique=True)
    verification_hash: str | None = Field(default=None, max_length=64)
    response_status: int = 202
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_called_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    call_count: int = 0
