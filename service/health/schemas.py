"""Health request and response bodies (SPEC §6)."""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, FiniteFloat, WithJsonSchema

MAX_BATCH = 10_000
"""Samples in one `POST /v1/health/samples`; more is a 422 (SPEC §2)."""

UserId = Annotated[str, Field(min_length=1, max_length=200, examples=["u_42"])]
SourceName = Annotated[str, Field(min_length=1, max_length=100, examples=["apple_watch"])]
BatchStatus = Literal["pending", "completed", "failed"]

SAMPLE_EXAMPLE: dict[str, Any] = {
    "id": "6F1C2A7E-9B53-4C1D-8E2F-0A1B2C3D4E5F",
    "type": "steps",
    "value": 412,
    "unit": "count",
    "start": "2026-12-03T23:50:00+01:00",
    "end": "2026-12-04T00:10:00+01:00",
    "tz_offset_minutes": 60,
    "source": "apple_watch",
    "device": "Watch7,1",
    "recording_method": "automatic",
    "modified_at": "2026-12-04T00:10:05+01:00",
}


class SampleIn(BaseModel):
    """One sample as a phone or an API sends it. Validated one by one: a sample that does
    not fit is rejected with its index and reason, never the whole batch."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [SAMPLE_EXAMPLE]})

    id: str = Field(
        min_length=1,
        max_length=200,
        description="The client's id (a HealthKit UUID, a Health Connect `clientRecordId`):"
        " with `source`, what makes re-sending a sample harmless.",
    )
    source: SourceName = Field(description="The app or device family (source priority).")
    user_id: UserId | None = Field(
        default=None, description="Optional; when given it must be the batch's `user_id`."
    )
    type: str | None = Field(
        default=None,
        max_length=60,
        description="See `GET /v1/health/types`; optional with `deleted`.",
    )
    value: FiniteFloat | None = Field(
        default=None, description="Required, except for `sleep` (its duration by default)."
    )
    unit: str | None = Field(default=None, max_length=20, examples=["count", "kJ", "mmol/L"])
    start: AwareDatetime | None = Field(default=None, description="Required unless `deleted`.")
    end: AwareDatetime | None = Field(default=None, description="Defaults to `start`.")
    tz_offset_minutes: int | None = Field(
        default=None, ge=-720, le=840, description="The local UTC offset when it was recorded."
    )
    timezone: str | None = Field(
        default=None,
        max_length=64,
        description="An IANA zone; wins over `tz_offset_minutes`. Without either: UTC.",
        examples=["Europe/Berlin"],
    )
    device: str | None = Field(default=None, max_length=200)
    recording_method: Literal["automatic", "active", "manual"] | None = None
    metadata: dict[str, Any] | None = Field(
        default=None, description="Kept as sent; `sleep` needs `metadata.stage`."
    )
    modified_at: AwareDatetime | None = Field(
        default=None,
        description="When the client last changed it: an update older than the stored one"
        " is ignored. Without it, the last to arrive wins.",
    )
    deleted: bool = Field(
        default=False, description="The client deleted it: only `id` and `source` needed."
    )


class BatchIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"user_id": "u_42", "samples": [SAMPLE_EXAMPLE]}]}
    )

    user_id: UserId
    samples: list[Annotated[Any, WithJsonSchema(SampleIn.model_json_schema(mode="validation"))]] = (
        Field(
            max_length=MAX_BATCH,
            description=f"At most {MAX_BATCH:,} samples; each is validated on its own.",
        )
    )


class Rejection(BaseModel):
    index: int = Field(description="The sample's position in `samples`.", examples=[3])
    reason: str = Field(examples=["heart_rate 900 count/min is outside 20-300"])


class BatchAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "batch_id": "hbt_06dd4jd5v0r4c0000000000000",
                    "status": "pending",
                    "accepted": 2,
                    "rejected": [{"index": 1, "reason": "end is before start"}],
                }
            ]
        }
    )

    batch_id: str
    status: BatchStatus
    accepted: int = Field(description="Samples the worker will store.")
    rejected: list[Rejection]


class BatchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "hbt_06dd4jd5v0r4c0000000000000",
                    "user_id": "u_42",
                    "status": "completed",
                    "created_at": "2026-12-04T10:00:00Z",
                    "completed_at": "2026-12-04T10:00:01Z",
                    "accepted": 2,
                    "rejected": [{"index": 1, "reason": "end is before start"}],
                    "ingested": 2,
                    "inserted": 1,
                    "updated": 0,
                    "deleted": 1,
                    "unchanged": 0,
                    "ignored": 0,
                    "error": None,
                }
            ]
        }
    )

    id: str
    user_id: str
    status: BatchStatus = Field(description="`pending` until the worker has stored it all.")
    created_at: datetime
    completed_at: datetime | None
    accepted: int
    rejected: list[Rejection]
    ingested: int = Field(description="Accepted samples processed so far.")
    inserted: int
    updated: int
    deleted: int
    unchanged: int = Field(description="Sent again as stored: nothing written.")
    ignored: int = Field(description="Older (`modified_at`) than the stored sample: dropped.")
    error: str | None = Field(description="Why a `failed` batch failed.")


class SampleOut(BaseModel):
    id: str
    source: str
    type: str | None
    value: float | None = Field(description="In the type's canonical `unit`.")
    unit: str | None
    start: datetime | None
    end: datetime | None
    tz_offset_minutes: int | None
    timezone: str | None
    device: str | None
    recording_method: str | None
    metadata: dict[str, Any] | None
    modified_at: datetime | None
    deleted: bool
    seq: int = Field(description="Its place in the user's change feed.")
    updated_at: datetime


_SAMPLE_OUT: dict[str, Any] = {
    **SAMPLE_EXAMPLE,
    "start": "2026-12-03T22:50:00Z",
    "end": "2026-12-03T23:10:00Z",
    "modified_at": "2026-12-03T23:10:05Z",
    "timezone": None,
    "metadata": None,
    "deleted": False,
    "seq": 7,
    "updated_at": "2026-12-04T10:00:01Z",
}


class SamplePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_SAMPLE_OUT], "next_cursor": None}]}
    )

    items: list[SampleOut] = Field(description="By `start`, then `source` and `id`.")
    next_cursor: str | None = Field(description="Ask `?cursor=` it for the next page.")


class HealthChanges(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        _SAMPLE_OUT,
                        {
                            **{key: None for key in _SAMPLE_OUT},
                            "id": "A7",
                            "source": "iphone",
                            "type": "steps",
                            "deleted": True,
                            "seq": 8,
                            "updated_at": "2026-12-04T10:00:01Z",
                        },
                    ],
                    "next_after": 8,
                }
            ]
        }
    )

    items: list[SampleOut] = Field(
        description="Inserted, updated and deleted samples by `seq`; a deleted one keeps"
        " only `id`, `source`, `type`."
    )
    next_after: int = Field(description="Store it; ask `?after=` it next time.")


class DailyRow(BaseModel):
    date: dt.date = Field(description="The local calendar day (sleep: the day it ends).")
    sum: float | None = Field(default=None, description="Cumulative types.")
    min: float | None = Field(default=None, description="Discrete types.")
    avg: float | None = None
    max: float | None = None
    count: int | None = Field(default=None, description="Discrete types: readings.")
    stages: dict[str, float] | None = Field(default=None, description="Sleep: seconds per stage.")
    sources: dict[str, float] = Field(
        description="What each source contributed after de-duplication (discrete: readings)."
    )


class DailyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u_42",
                    "type": "steps",
                    "unit": "count",
                    "kind": "cumulative",
                    "days": [{"date": "2026-12-03", "sum": 8123, "sources": {"apple_watch": 8123}}],
                }
            ]
        }
    )

    user_id: str
    type: str
    unit: str
    kind: str
    days: list[DailyRow] = Field(description="Days with data, oldest first.")


class SourcesIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"sources": ["oura", "apple_watch", "iphone"]}]}
    )

    sources: list[SourceName] = Field(
        max_length=50, description="Highest priority first; sources not listed come after."
    )


class SourcesOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"user_id": "u_42", "sources": ["oura", "iphone"]}]}
    )

    user_id: str
    sources: list[str]


class TypeOut(BaseModel):
    name: str = Field(examples=["distance"])
    unit: str = Field(examples=["m"])
    kind: str = Field(examples=["cumulative"])
    units: list[str] = Field(examples=[["m", "km", "mi", "ft", "yd"]])
    low: float | None = Field(examples=[0])
    high: float | None = Field(examples=[None])
    max_duration_seconds: float | None = Field(examples=[90000])
    categories: list[str] | None = Field(examples=[None])


class TypeList(BaseModel):
    items: list[TypeOut]
