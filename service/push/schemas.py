"""Push URL request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ResponseStatus = Literal[200, 202, 204]

_VERIFICATION = (
    "A code the provider sends back when it checks the URL: Fitbit's subscriber"
    " verification code (`?verify=`), or the `verify_token` / `verification_token` you gave"
    " Strava or Oura. Stored hashed; when set, a handshake with another code is a 404."
)
_STATUS = (
    "The status a notification is answered with: 202 by default; 200 for providers that"
    " insist on it (Strava, Withings, Garmin, Oura), 204 for Fitbit."
)

_OUT_EXAMPLE: dict[str, Any] = {
    "id": "psh_ag2m3kq7cccccccccccccccccc",
    "task_id": "tsk_ag2m3kq7aaaaaaaaaaaaaaaaaa",
    "response_status": 202,
    "has_verification_code": False,
    "created_at": "2026-12-05T10:00:00Z",
    "last_called_at": None,
    "call_count": 0,
}
_TOKEN = "bkp_Zq3r0Vt9mJb1XoYl6gD4cR8sNwA2uHkE5fTiPyQx7Lc"  # noqa: S105 - an example


class PushUrlIn(BaseModel):
    """Optional settings of a new push URL."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{}, {"response_status": 204, "verification_code": "3f2a9c71d0"}]
        },
    )

    verification_code: str | None = Field(
        default=None, min_length=1, max_length=200, description=_VERIFICATION
    )
    response_status: ResponseStatus = Field(default=202, description=_STATUS)


class PushUrlPatch(BaseModel):
    """Change a push URL's handshake code or answer; `verification_code: null` removes it."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"verification_code": "3f2a9c71d0"}]}
    )

    verification_code: str | None = Field(
        default=None, min_length=1, max_length=200, description=_VERIFICATION
    )
    response_status: ResponseStatus | None = Field(default=None, description=_STATUS)


class PushUrlOut(BaseModel):
    """A push URL as listed: never its token (only its hash is stored)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_OUT_EXAMPLE]})

    id: str
    task_id: str
    response_status: ResponseStatus
    has_verification_code: bool
    created_at: datetime
    last_called_at: datetime | None = Field(description="The last notification (POST/PUT).")
    call_count: int = Field(description="Notifications received; handshakes not counted.")


class PushUrlCreated(PushUrlOut):
    """A new push URL, with the one and only showing of its URL and token."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_OUT_EXAMPLE,
                    "url": f"https://backsync.example.com/v1/push/{_TOKEN}",
                    "token": _TOKEN,
                }
            ]
        }
    )

    url: str = Field(description="Give this to the provider. It is not shown again.")
    token: str = Field(description="The secret part of `url`.")


class PushUrlList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_OUT_EXAMPLE]}]})

    items: list[PushUrlOut]


class PushReceipt(BaseModel):
    """What a notification did. Providers ignore the body; it is there for people."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"outcome": "started", "starts_at": None},
                {"outcome": "coalesced", "starts_at": "2026-12-05T10:00:30Z"},
            ]
        }
    )

    outcome: Literal["started", "coalesced", "paused"] = Field(
        description="`started`: a new run; `coalesced`: a run was already queued or running"
        " and covers this push; `paused`: the task is paused, nothing runs."
    )
    starts_at: datetime | None = Field(
        description="When the queued run may start (debounce); null: now, or already running."
    )


class HandshakeOut(BaseModel):
    """The echo of a subscription check: exactly the key the provider sent."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [{"hub.challenge": "15f7d1a91c1f40"}, {"challenge": "a1b2c3"}, {}]
        },
    )

    challenge: str | None = None
    hub_challenge: str | None = Field(default=None, alias="hub.challenge")
