"""What a delivery sends: the event as the feed shows it, rendered once into the exact
bytes every attempt will carry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from service.ids import new_id

ALL_EVENTS = "*"


def body(
    message_id: str, type_: str, at: datetime, data: dict[str, Any], seq: int | None = None
) -> str:
    """The event as the feed shows it, `{"id", "seq", "type", "timestamp", "data"}` (a
    ping has no `seq`): a receiver that missed deliveries resumes `GET /v1/events` there."""
    event: dict[str, Any] = {"id": message_id, "seq": seq, "type": type_}
    event |= {"timestamp": at, "data": data}
    if seq is None:
        del event["seq"]
    return orjson.dumps(event, option=orjson.OPT_UTC_Z).decode()


def delivery_row(
    *,
    tenant_id: str,
    webhook_id: str,
    message_id: str,
    event_type: str,
    payload: str,
    due: datetime,
    event_seq: int | None = None,
) -> dict[str, Any]:
    """A new pending delivery, due at `due`, as an INSERT's values."""
    return {
        "id": new_id("dlv"),
        "tenant_id": tenant_id,
        "webhook_id": webhook_id,
        "message_id": message_id,
        "event_seq": event_seq,
        "event_type": event_type,
        "payload": payload,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": due,
        "attempt_log": [],
        "created_at": due,
    }
