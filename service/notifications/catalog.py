"""Every event Backsync emits (SPEC §7) and the shape of its `data`: one builder per
type, so a payload is written in one place whichever code emits it.

Every payload of a task's event names its `task_id`, `user_id` and `run_id`, so a
consumer can route it without another request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from service.notifications.outbox import Computed, NewEvent

RUN_SUCCEEDED: Final = "run.succeeded"
RUN_FAILED: Final = "run.failed"
TASK_RECOVERED: Final = "task.recovered"
TASK_PAUSED: Final = "task.paused"
TASK_AUTH_FAILED: Final = "task.auth_failed"
RECORDS_CHANGED: Final = "records.changed"
HEALTH_BATCH_COMPLETED: Final = "health.batch.completed"
WEBHOOK_DISABLED: Final = "webhook.disabled"
PING: Final = "ping"
"""Sent by `POST /v1/webhooks/{id}/test` to that endpoint only; never in the feed."""

EVENT_TYPES: Final = (
    RUN_SUCCEEDED,
    RUN_FAILED,
    TASK_RECOVERED,
    TASK_PAUSED,
    TASK_AUTH_FAILED,
    RECORDS_CHANGED,
    HEALTH_BATCH_COMPLETED,
    WEBHOOK_DISABLED,
)

AUTH_REFUSED: Final = frozenset({401, 403})
"""Upstream statuses that mean the task's credentials were refused."""

PAUSED_BY_FAILURES: Final = "consecutive_failures"
"""`task.paused_reason` of a task the worker paused."""


@dataclass(frozen=True, slots=True)
class RunSubject:
    """The run an event is about, and its task."""

    task_id: str
    user_id: str | None
    run_id: str
    trigger: str
    attempt: int


def _event(type_: str, subject: RunSubject, **data: Any) -> NewEvent:
    about = {"task_id": subject.task_id, "user_id": subject.user_id, "run_id": subject.run_id}
    return NewEvent(type_, {**about, **data}, subject.task_id, subject.user_id)


def run_succeeded(
    subject: RunSubject, finished_at: datetime, stats: dict[str, int] | Computed
) -> NewEvent:
    return _event(
        RUN_SUCCEEDED,
        subject,
        trigger=subject.trigger,
        attempt=subject.attempt,
        finished_at=finished_at.isoformat(),
        stats=stats,
    )


def run_failed(
    subject: RunSubject, finished_at: datetime, error: dict[str, Any], failures: int
) -> NewEvent:
    """The run's final attempt failed (a retried attempt emits nothing)."""
    return _event(
        RUN_FAILED,
        subject,
        trigger=subject.trigger,
        attempt=subject.attempt,
        finished_at=finished_at.isoformat(),
        error=error,
        consecutive_failures=failures,
    )


def records_changed(
    subject: RunSubject,
    inserted: int | Computed,
    updated: int | Computed,
    deleted: int | Computed,
    next_after: int | Computed,
) -> NewEvent:
    """The run wrote records: `next_after` is the task feed's seq after them, so a backend
    can tell a phone "pull `GET /v1/tasks/{task_id}/records?after=<yours>`"."""
    return _event(
        RECORDS_CHANGED,
        subject,
        inserted=inserted,
        updated=updated,
        deleted=deleted,
        next_after=next_after,
    )


def task_recovered(subject: RunSubject, failures: int) -> NewEvent:
    """The first success after `failures` failed runs in a row."""
    return _event(TASK_RECOVERED, subject, failures=failures)


def task_paused(subject: RunSubject, failures: int, error: dict[str, Any]) -> NewEvent:
    return _event(
        TASK_PAUSED, subject, reason=PAUSED_BY_FAILURES, consecutive_failures=failures, error=error
    )


def task_auth_failed(subject: RunSubject, error: dict[str, Any]) -> NewEvent:
    """The upstream refused the task's credentials: ask the user to reconnect (once per
    failure streak)."""
    return _event(TASK_AUTH_FAILED, subject, http_status=error.get("http_status"), error=error)


def webhook_disabled(webhook_id: str, url: str, failing_since: datetime) -> NewEvent:
    """The worker disabled an endpoint whose deliveries kept failing: nothing more is
    sent to it until a client re-enables it (`PATCH {"disabled": false}`)."""
    return NewEvent(
        WEBHOOK_DISABLED,
        {
            "webhook_id": webhook_id,
            "url": url,
            "reason": "failing",
            "failing_since": failing_since.isoformat(),
        },
    )


def health_batch_completed(
    batch_id: str, user_id: str, totals: dict[str, int], rejected: int, next_after: int
) -> NewEvent:
    """The worker stored a health batch: `next_after` is the user's health change feed
    position after it, so a backend can tell a phone "pull `GET /v1/health/changes`"."""
    counts = {name: totals[name] for name in HEALTH_BATCH_COUNTS}
    data = {"batch_id": batch_id, "user_id": user_id, "rejected": rejected, **counts}
    return NewEvent(HEALTH_BATCH_COMPLETED, {**data, "next_after": next_after}, user_id=user_id)


HEALTH_BATCH_COUNTS: Final = ("accepted", "inserted", "updated", "deleted", "unchanged", "ignored")
