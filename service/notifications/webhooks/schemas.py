"""Webhook request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

DeliveryStatus = Literal["pending", "succeeded", "failed"]

_WEBHOOK_EXAMPLE: dict[str, Any] = {
    "id": "wh_06dd4jd5v0r4c0000000000000",
    "url": "https://app.example.com/hooks/backsync",
    "events": ["run.failed", "task.paused", "records.changed"],
    "disabled": False,
    "disabled_reason": None,
    "failing_since": None,
    "previous_secret_until": None,
    "created_at": "2026-12-04T10:00:00Z",
    "updated_at": "2026-12-04T10:00:00Z",
}
_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw/Sx8AxvrQjk="  # noqa: S105 (an example)

Events = list[str]
_EVENTS_DOC = (
    'Event types to deliver (see the README\'s catalog), or `["*"]` for all of them,'
    " including types added later."
)


class WebhookIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": _WEBHOOK_EXAMPLE["url"], "events": _WEBHOOK_EXAMPLE["events"]}]
        },
    )

    url: AnyHttpUrl = Field(max_length=2048, description="Where deliveries are POSTed.")
    events: Events = Field(min_length=1, max_length=50, description=_EVENTS_DOC)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"disabled": True}, {"events": ["*"]}]}
    )

    url: AnyHttpUrl | None = Field(default=None, max_length=2048)
    events: Events | None = Field(default=None, min_length=1, max_length=50)
    disabled: bool | None = Field(
        default=None,
        description=(
            "`true` stops deliveries; `false` resumes them from the events after now"
            " (what happened meanwhile is in `GET /v1/events`)."
        ),
    )


class RotateSecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(
        default=86_400,
        ge=0,
        le=7 * 86_400,
        description="How long deliveries are also signed with the old secret.",
    )


class WebhookOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_WEBHOOK_EXAMPLE]})

    id: str
    url: str
    events: Events
    disabled: bool
    disabled_reason: Literal["client", "failing"] | None = Field(
        description="`failing`: the worker disabled it after deliveries failed for days."
    )
    failing_since: datetime | None = Field(
        description="The first failed attempt since the last success."
    )
    previous_secret_until: datetime | None = Field(
        description="Until then, deliveries are also signed with the secret before the rotation."
    )
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookOut):
    """The endpoint and its signing secret: shown here, once, and never again."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_WEBHOOK_EXAMPLE, "secret": _SECRET}]}
    )

    secret: str = Field(
        description="`whsec_` + base64: verify deliveries with it. Keep it: it is not shown again."
    )


class WebhookList(BaseModel):
    items: list[WebhookOut]


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The endpoint's answer; null when none came.")
    error: str | None = Field(description="Why the attempt failed (`timeout`, `HTTP 500`, ...).")
    duration_ms: int


_DELIVERY_EXAMPLE: dict[str, Any] = {
    "id": "dlv_06dd4jd5v0r4c0000000000000",
    "webhook_id": _WEBHOOK_EXAMPLE["id"],
    "message_id": "evt_06dd4jd5v0r4c0000000000000",
    "event_type": "run.failed",
    "status": "succeeded",
    "attempts": 2,
    "next_attempt_at": None,
    "last_status_code": 200,
    "last_error": None,
    "attempt_log": [
        {
            "at": "2026-12-04T10:00:01Z",
            "status_code": 503,
            "error": "HTTP 503",
            "duration_ms": 12,
        },
        {"at": "2026-12-04T10:00:06Z", "status_code": 200, "error": None, "duration_ms": 9},
    ],
    "created_at": "2026-12-04T10:00:01Z",
}


class DeliveryOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_DELIVERY_EXAMPLE]})

    id: str
    webhook_id: str
    message_id: str = Field(description="The `webhook-id` header, the same on every attempt.")
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = Field(description="When it is tried next, while pending.")
    last_status_code: int | None
    last_error: str | None
    attempt_log: list[AttemptOut]
    created_at: datetime


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = Field(description="Pass as `?cursor=` for older deliveries.")
