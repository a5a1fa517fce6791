from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_ITEM_EXAMPLE: dict[str, Any] = {
    "key": "evt_1",
    "data": {"id": "evt_1", "steps": 8123},
    "deleted": False,
    "seq": 17,
    "updated_at": "2026-11-22T10:00:00Z",
}


class RecordOut(BaseModel):
    key: Any = Field(
        description="The primary key value; a list for compound keys.", examples=["evt_1"]
    )
    data: Any = Field(
        description="The record as the upstream sent it; null when `deleted`.",
        examples=[{"id": "evt_1", "steps": 8123}],
    )
    deleted: bool = Field(
        default=False,
        description=(
            "The record is gone from the upstream (tasks with `source.detect_deletions`):"
            " remove it. If it comes back, it appears again with a later seq."
        ),
    )
    seq: int = Field(examples=[17])
    updated_at: datetime


class RecordFeed(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        _ITEM_EXAMPLE,
                        {**_ITEM_EXAMPLE, "key": "evt_0", "data": None, "deleted": True, "seq": 18},
                    ],
                    "next_after": 18,
                }
            ]
        }
    )

    items: list[RecordOut]
    next_after: int = Field(
        description="Store it; ask `?after=` it next time for only what changed."
    )


class ChangeOut(RecordOut):
    """A record in a user's change feed: a task's feed item, naming its task."""

    task_id: str = Field(
        description="The task the record belongs to.", examples=["tsk_ag2m3kq7aaaaaaaaaaaaaaaaaa"]
    )


class ChangeFeed(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {**_ITEM_EXAMPLE, "task_id": "tsk_ag2m3kq7aaaaaaaaaaaaaaaaaa"},
                    ],
                    "next_after": "eyJ0c2tfYWcybTNrcTdhYWFhYWFhYWFhYWFhYWFhYWEiOjE3fQ",
                }
            ]
        }
    )

    items: list[ChangeOut] = Field(
        description="In (seq, task_id) order: each task's records in the order they "
        "changed, the tasks interleaved by seq."
    )
    next_after: str = Field(
        description="An opaque cursor: store it and ask `?after=` it next time for only "
        "what changed since, in any of the user's tasks. Unchanged when nothing is new."
    )
