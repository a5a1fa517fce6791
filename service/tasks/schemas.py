"""Task request and response bodies (SPEC §3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from service.health.mapping import HealthMapping
from service.sync import Limits, Retry, Source

RunStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]

# Any aware moment will do to parse a cron expression (cronsim parses in its constructor).
_ANY_MOMENT = datetime(2026, 1, 1, tzinfo=UTC)

Tag = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\w.:/-]+$")]

TASK_EXAMPLE: dict[str, Any] = {
    "name": "oura-daily-activity",
    "user_id": "u_42",
    "kind": "http",
    "source": {
        "url": "https://api.example.com/v2/daily_activity",
        "method": "GET",
        "headers": {"Accept": "application/json"},
        "params": {"start_date": "2026-01-01"},
        "auth": {"type": "bearer", "token": "oura-token-123456"},
        "records_path": "data",
        "primary_key": "id",
        "pagination": {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"},
    },
    "schedule": {"every_seconds": 3600, "jitter_seconds": 60},
    "retry": {
        "max_attempts": 5,
        "backoff": "exponential",
        "initial_delay_seconds": 10,
        "max_delay_seconds": 3600,
    },
    "limits": {
        "timeout_seconds": 30,
        "max_pages": 10000,
        "max_response_bytes": 10485760,
        "requests_per_second": None,
    },
    "tags": ["wearable"],
}


DEBOUNCE = (
    "Seconds a push (`/v1/push/{token}`) waits before its run starts, from the first push"
    " of a burst: pushes arriving meanwhile join that run. 0: at once."
)


class Schedule(BaseModel):
    """Either `every_seconds` (with optional jitter) or a 5-field `cron` in `timezone`."""

    model_config = ConfigDict(extra="forbid")

    every_seconds: int | None = Field(
        default=None,
        ge=1,
        description="At least `BACKSYNC_MIN_INTERVAL_SECONDS` (60 by default). Slots sit at "
        "a fixed phase of the period, taken from the task id.",
    )
    cron: str | None = Field(
        default=None,
        max_length=200,
        description="5 fields: minute hour day-of-month month day-of-week, in `timezone`.",
        examples=["0 9 * * 1-5"],
    )
    jitter_seconds: int = Field(
        default=0,
        ge=0,
        description="With `every_seconds` only, and less than it: each slot is delayed by "
        "its own 0..jitter_seconds.",
    )
    timezone: str = Field(default="UTC", description="An IANA time zone name, for `cron`.")

    @field_validator("cron")
    @classmethod
    def _parsable_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        fields = value.split()
        if len(fields) != 5:
            raise ValueError("cron must have 5 fields: minute hour day-of-month month day-of-week")
        try:
            CronSim(value, _ANY_MOMENT)
        except CronSimError as exc:
            raise ValueError(f"not a valid cron expression: {exc}") from exc
        return " ".join(fields)

    # Declared after every_seconds and cron so that it sees them (when they are valid).
    @field_validator("jitter_seconds")
    @classmethod
    def _jitter_within_the_period(cls, value: int, info: ValidationInfo) -> int:
        every, cron = info.data.get("every_seconds"), info.data.get("cron")
        if value and cron is not None and every is None:
            raise ValueError("jitter_seconds applies to every_seconds only (use 0 with cron)")
        if every is not None and value >= every:
            raise ValueError(f"must be less than every_seconds ({every})")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.every_seconds is None) == (self.cron is None):
            raise ValueError("give exactly one of every_seconds or cron")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [TASK_EXAMPLE]})

    name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\w.:@/-]+$")]
    user_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    kind: Literal["http"] = "http"
    source: Source
    schedule: Schedule | None = None
    retry: Retry = Field(default_factory=Retry)
    limits: Limits = Field(default_factory=Limits)
    health_mapping: HealthMapping | None = Field(
        default=None,
        description="Turn each synced record into health samples (SPEC §6; needs `user_id`)."
        ' See the README\'s "Wearable APIs" section.',
    )
    tags: Annotated[list[Tag], Field(max_length=20)] = Field(default_factory=list)
    paused: bool = False
    debounce_seconds: int = Field(default=0, ge=0, le=3600, description=DEBOUNCE)


class TaskPatch(BaseModel):
    """A JSON merge patch (RFC 7396): objects merge, `null` removes, other values replace."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"paused": True}, {"source": {"params": {"start_date": "2026-02-01"}}}]
        },
    )

    name: str | None = None
    user_id: str | None = None
    source: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None
    health_mapping: dict[str, Any] | None = None
    tags: list[str] | None = None
    paused: bool | None = None
    debounce_seconds: int | None = None


# Parts of a task as stored, documented as the models they were validated with when the
# task was registered. They are not validated again on the way out: a task stored under
# older rules must still be readable (and fixable) through the API.
StoredSource = Annotated[
    dict[str, Any], WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/Source"}]})
]
StoredSchedule = Annotated[
    dict[str, Any], WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/Schedule"}]})
]
StoredRetry = Annotated[
    dict[str, Any], WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/Retry"}]})
]
StoredLimits = Annotated[
    dict[str, Any], WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/Limits"}]})
]
StoredHealthMapping = Annotated[
    dict[str, Any], WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/HealthMapping"}]})
]


class TaskOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **TASK_EXAMPLE,
                    "id": "tsk_ag2m3kq7aaaaaaaaaaaaaaaaaa",
                    "source": {
                        **TASK_EXAMPLE["source"],
                        "auth": {"type": "bearer", "token": "****3456"},
                    },
                    "state": "active",
                    "paused": False,
                    "paused_reason": None,
                    "next_run_at": None,
                    "skipped_runs": 0,
                    "debounce_seconds": 0,
                    "last_run": None,
                    "last_success_at": None,
                    "consecutive_failures": 0,
                    "auth_failed_at": None,
                    "watermark": None,
                    "created_at": "2026-11-22T10:00:00Z",
                    "updated_at": "2026-11-22T10:00:00Z",
                }
            ]
        }
    )

    id: str
    name: str
    user_id: str | None
    kind: str
    source: StoredSource = Field(description="The source, credentials masked as `****abcd`.")
    schedule: StoredSchedule | None
    retry: StoredRetry
    limits: StoredLimits
    health_mapping: StoredHealthMapping | None
    tags: list[str]
    state: Literal["active", "paused"]
    paused: bool
    paused_reason: Literal["client", "consecutive_failures"] | None = Field(
        default=None,
        description=(
            "Why the task is paused: `client` (through the API) or `consecutive_failures`"
            " (by the worker after `BACKSYNC_AUTO_PAUSE_AFTER_FAILURES` failed runs in a"
            ' row; PATCH `{"paused": false}` resumes it). Null while active.'
        ),
    )
    next_run_at: datetime | None = Field(
        description="When the schedule fires next; null without a schedule or while paused."
    )
    skipped_runs: int = Field(
        default=0,
        description="Schedule slots skipped because the previous run was still active.",
    )
    debounce_seconds: int = Field(default=0, description=DEBOUNCE)
    last_run: RunSummary | None
    last_success_at: datetime | None
    consecutive_failures: int = Field(description="Failed runs since the last success.")
    auth_failed_at: datetime | None = Field(
        default=None,
        description=(
            "When the upstream last refused the task's credentials (401/403) since its last"
            " success: ask the user to reconnect. Cleared by a success or new credentials."
        ),
    )
    watermark: Any | None
    created_at: datetime
    updated_at: datetime


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


# Run shapes a task shows (its last run, a dry run's error) live here, in the domain the
# runs domain builds on, so that tasks never imports runs.


class RunError(BaseModel):
    """Why a run (or a dry run) failed."""

    code: str = Field(examples=["upstream_status"])
    message: str = Field(examples=["upstream answered 404 Not Found"])
    http_status: int | None = Field(default=None, examples=[404])
    retryable: bool = False


class RunSummary(BaseModel):
    """The task's latest run."""

    id: str
    status: RunStatus
    created_at: datetime
    finished_at: datetime | None
