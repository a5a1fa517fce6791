"""Run response bodies (SPEC §4)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.tasks.schemas import RunError, RunStatus


class Backfill(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(
        alias="from", min_length=1, max_length=100, examples=["2026-01-01T00:00:00Z"]
    )
    to: str = Field(min_length=1, max_length=100, examples=["2026-02-01T00:00:00Z"])


class TriggerIn(BaseModel):
    """Optional body of a trigger."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {},
                {"full_refresh": True},
                {"backfill": {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}},
            ]
        },
    )

    full_refresh: bool = Field(
        default=False,
        description=(
            "Read every page again, ignoring stored validators and page digests; an"
            " incremental task starts from `incremental.initial_value`, ignoring the"
            " watermark. With `source.detect_deletions`, the run then marks what it did not"
            " see as deleted."
        ),
    )
    backfill: Backfill | None = Field(
        default=None,
        description="Fetch this window only (needs `source.incremental`); the watermark is"
        " left alone",
    )


class RunStats(BaseModel):
    pages: int = 0
    requests: int = 0
    not_modified: int = 0
    records_seen: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    deleted: int = Field(
        default=0, description="Stored records this run found gone (`detect_deletions`)."
    )
    bytes: int = 0
    samples_written: int = Field(
        default=0,
        description="Health samples inserted, updated or deleted from the records"
        " (a task with a `health_mapping`).",
    )
    samples_rejected: int = Field(
        default=0,
        description="Health samples the mapping could not make from a record (the record"
        " itself is stored; the worker's log says why).",
    )


RUN_EXAMPLE: dict[str, Any] = {
    "id": "run_ag2m3kq7bbbbbbbbbbbbbbbbbb",
    "task_id": "tsk_ag2m3kq7aaaaaaaaaaaaaaaaaa",
    "status": "succeeded",
    "trigger": "manual",
    "attempt": 1,
    "created_at": "2026-11-22T10:00:00Z",
    "started_at": "2026-11-22T10:00:00.050Z",
    "finished_at": "2026-11-22T10:00:02Z",
    "next_attempt_at": None,
    "cancel_requested": False,
    "waiting_reason": None,
    "stats": {
        "pages": 3,
        "requests": 3,
        "not_modified": 0,
        "records_seen": 250,
        "inserted": 240,
        "updated": 5,
        "unchanged": 3,
        "rejected": 2,
        "deleted": 0,
        "bytes": 81234,
        "samples_written": 0,
        "samples_rejected": 0,
    },
    "error": None,
    "attempts": [],
}


class RunOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [RUN_EXAMPLE]})

    id: str
    task_id: str
    status: RunStatus
    trigger: Literal["manual", "schedule", "push"]
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None = Field(
        description="When a retrying run's next attempt starts, or when a queued run may"
        " start (a push to a task with `debounce_seconds`); null when it may start now."
    )
    cancel_requested: bool
    waiting_reason: Literal["tenant_concurrency_limit"] | None = Field(
        default=None,
        description="Why a run that may start is not running yet: `tenant_concurrency_limit`"
        " while its tenant already runs as many runs as the server allows at once"
        " (`BACKSYNC_TENANT_MAX_RUNNING`). It starts, oldest first, as the tenant's other"
        " runs end, and waiting spends none of its attempts; `next_attempt_at` is then when"
        " it is looked at again at the latest. Null otherwise.",
    )
    stats: RunStats
    error: RunError | None
    attempts: list[dict[str, Any]]


class RunPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [RUN_EXAMPLE], "next_cursor": None}]}
    )

    items: list[RunOut]
    next_cursor: str | None
