"""What a run tells the operator as it goes: its metrics (`service.metrics`) and, when
it ends, one structured log line.

The line is `run <id> <status> in <s> s (...)`, with, in JSON logs, the fields `event`
(`run.ended`), `task_id`, `run_id`, `status`, `attempt`, `duration_seconds`,
`error_code` (null on success) and `counts` (the run's counters over all its attempts).
Nothing here queries the database: the counts are the ones the statement that ended the
run returned (`LeasedRun.totals`).
"""

from __future__ import annotations

import logging
from typing import Any

from service import metrics
from service.models.types import utcnow
from service.runs.ledger import LeasedRun, Outcome
from service.sync import Page

log = logging.getLogger(__name__)


def page(fetched: Page) -> None:
    """A page a run is about to store: decoded, identical to the stored bytes, or a 304."""
    if fetched.not_modified:
        metrics.PAGE["not_modified"].inc()
    elif fetched.same_as_before:
        metrics.PAGE["identical"].inc()
    else:
        metrics.PAGE["decoded"].inc()


def outcome(run: LeasedRun, result: Outcome) -> None:
    """How an attempt that raised nothing ended."""
    match result:
        case Outcome.FINISHED:
            ended(run, "succeeded")
        case Outcome.CANCELLED:
            ended(run, "cancelled")
        case Outcome.LEASE_LOST:
            metrics.LEASES_LOST.inc()
            log.warning("run %s: its lease is another worker's now; stopped", run.run_id)
        case _:
            log.info("run %s attempt %s: %s", run.run_id, run.attempt, result.value)


def retried(error: dict[str, Any]) -> None:
    metrics.RUN_RETRIES.labels(error.get("code") or "").inc()


def taken_over(run: LeasedRun) -> None:
    metrics.LEASE_TAKEOVERS.inc()
    log.info(
        "run %s: taken over from worker %s, whose lease expired", run.run_id, run.previous_owner
    )


def ended(run: LeasedRun, status: str, error: dict[str, Any] | None = None) -> None:
    """A run this worker ended (its end written: `run.totals`); nothing when the end was
    not this worker's to write (the lease was lost, the task deleted)."""
    totals = run.totals
    if totals is None:
        return
    seconds = max(0.0, (utcnow() - run.first_started_at).total_seconds())
    code = error.get("code") if error else None
    metrics.run_ended(status, code, seconds, totals)
    counts = ", ".join(f"{name} {value}" for name, value in totals.items())
    log.info(
        "run %s %s in %.3f s (%s)%s",
        run.run_id,
        status,
        seconds,
        counts,
        f"; error {code}" if code else "",
        extra={
            "fields": {
                "event": "run.ended",
                "task_id": run.task_id,
                "run_id": run.run_id,
                "status": status,
                "attempt": run.attempt,
                "duration_seconds": round(seconds, 3),
                "error_code": code,
                "counts": totals,
            }
        },
    )
