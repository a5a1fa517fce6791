from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_EVENT_EXAMPLE: dict[str, Any] = {
    "id": "evt_06dd4jd5v0r4c0000000000000",
    "seq": 41,
    "type": "records.changed",
    "timestamp": "2026-12-04T10:00:03Z",
    "data": {
        "task_id": "tsk_ag2m3kq7aaaaaaaaaaaaaaaaaa",
        "user_id": "u_42",
        "run_id": "run_06dd4jd2k8r4c0000000000000",
        "inserted": 12,
        "updated": 3,
        "deleted": 0,
        "next_after": 1815,
    },
}


class EventOut(BaseModel):
    """Something that happened, as SPEC §7 names it: `{id, type, timestamp, data}`."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EVENT_EXAMPLE]})

    id: str = Field(description="Unique; a webhook delivery of this event carries it.")
    seq: int = Field(description="The event's place in the tenant's feed (`?after=`).")
    type: str = Field(
        description=(
            "`run.succeeded`, `run.failed`, `task.recovered`, `task.paused`,"
            " `task.auth_failed`, `records.changed`, `health.batch.completed`."
        ),
        examples=["records.changed"],
    )
    timestamp: datetime = Field(description="When the change that caused it committed.")
    data: dict[str, Any] = Field(description="The event's payload (see the README's catalog).")


class EventFeed(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_EVENT_EXAMPLE], "next_after": 41}]}
    )

    items: list[EventOut]
    next_after: int = Field(
        description="Store it; ask `?after=` it next time for only newer events."
    )
