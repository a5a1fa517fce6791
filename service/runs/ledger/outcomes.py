"""How a run's end changes its task, and what it tells the world: the events of SPEC §7
a run causes, written in the transaction that ends it (`service.notifications.outbox`).

- Success: the task's failure streak ends (`consecutive_failures` 0, `auth_failed_at`
  cleared); events `run.succeeded`, `records.changed` when the run wrote anything, and
  `task.recovered` when it ends a streak of failed runs.
- Failure (the run's final attempt): the streak grows; events `run.failed`, then
  `task.auth_failed` the first time in a streak the upstream refused the credentials
  (401/403), and `task.paused` when the streak reaches the auto-pause threshold, which
  also pauses the task (its schedule stops until a client resumes it). A resumed task
  that keeps failing pauses again after as many failures more (at twice, three times the threshold),
  and its first success still says `task.recovered`.

Attempts that will be retried emit nothing: a client hears about a run once, when it
ends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.models.types import utcnow
from service.notifications import catalog
from service.notifications.outbox import Computed, NewEvent, append
from service.runs.ledger.run import Ending, LeasedRun
from service.runs.ledger.statements import ENDED_STATS, RUN, TASK, end_run, held

_ENDED = select(*(RUN.c[name] for name in ENDED_STATS), TASK.c.record_seq).join_from(
    RUN, TASK, TASK.c.id == RUN.c.task_id
)
CHANGED_COUNTS = ("inserted", "updated", "deleted")


@dataclass(frozen=True, slots=True)
class Ended:
    """What a success reports: the run's totals over all its attempts, and its task's
    feed position after them."""

    totals: dict[str, int]
    record_seq: int


async def succeed_run(
    session: AsyncSession, run: LeasedRun, owner: str, ending: Ending, deleted: int = 0
) -> None:
    """The run succeeds (fenced), its task records the outcome and watermark, and the
    success's events are written."""
    await session.execute(
        update(RUN)
        .where(held(run.run_id, owner))
        .values(
            status="succeeded",
            finished_at=ending.now,
            error=None,
            next_attempt_at=None,
            lease_owner=None,
            lease_expires_at=None,
            attempts=ending.attempts,
            deleted=RUN.c.deleted + deleted,
        )
    )
    task: dict[str, Any] = {
        "last_success_at": ending.now,
        "consecutive_failures": 0,
        "auth_failed_at": None,
    }
    if ending.watermark is not None:
        task["watermark"] = ending.watermark
    await session.execute(update(TASK).where(TASK.c.id == run.task_id).values(**task))
    await record_success(session, run, ending.now)


async def record_success(session: AsyncSession, run: LeasedRun, now: datetime) -> None:
    """Write the events of a success just written in this transaction, reading the run's
    totals back."""
    row = (await session.execute(_ENDED.where(RUN.c.id == run.run_id))).one()
    ended = Ended(dict(zip(ENDED_STATS, row[:-1], strict=True)), row.record_seq)
    run.totals = {name: int(ended.totals[name]) for name in ENDED_STATS}
    await append(session, run.tenant_id, success_events(run, now, ended), now)


def success_events(run: LeasedRun, now: datetime, ended: Ended | None = None) -> list[NewEvent]:
    """The events of a success: `run.succeeded`, `records.changed` when the run wrote
    anything, `task.recovered` when it ends a failure streak.

    Without `ended`, the totals are `Computed` by the statement that writes the events
    (PostgreSQL's ledger, whose last page's statement ends the run): `stats` (the run's
    `ENDED_STATS`), each of `CHANGED_COUNTS`, `next_after` (the task's feed position) and
    `changed` (whether any of `CHANGED_COUNTS` is not 0)."""
    subject = run.subject
    if ended is None:
        stats: dict[str, int] | Computed = Computed("stats")
        counts: list[int | Computed] = [Computed(name) for name in CHANGED_COUNTS]
        next_after: int | Computed = Computed("next_after")
    else:
        stats = {name: int(ended.totals[name]) for name in ENDED_STATS}
        counts = [stats[name] for name in CHANGED_COUNTS]
        next_after = int(ended.record_seq)
    events = [catalog.run_succeeded(subject, now, stats)]
    inserted, updated, deleted = counts
    changed = catalog.records_changed(subject, inserted, updated, deleted, next_after)
    if ended is None:
        events.append(replace(changed, only_if="changed"))
    elif any(counts):
        events.append(changed)
    if run.prior_failures:
        events.append(catalog.task_recovered(subject, run.prior_failures))
    return events


async def fail_run(
    session: AsyncSession,
    run: LeasedRun,
    owner: str,
    error: dict[str, Any],
    entry: dict[str, Any],
    pause_after: int,
) -> None:
    """End the run as failed (fenced), count the failure on its task, pause the task
    after `pause_after` in a row (0: never), and write the events. The task row is
    written first: it takes the task's lock before the run's, the order every page
    commit takes them in (and SQLite's write lock, before anything is read)."""
    counted = await session.execute(
        update(TASK)
        .where(TASK.c.id == run.task_id)
        .values(consecutive_failures=TASK.c.consecutive_failures + 1)
        .returning(TASK.c.consecutive_failures, TASK.c.paused, TASK.c.auth_failed_at)
    )
    task = counted.first()
    ended = (await session.execute(end_run(run, owner, "failed", error, entry))).first()
    if task is None or ended is None:  # the task is gone, or the run not ours
        await session.rollback()
        return
    run.totals = dict(zip(ENDED_STATS, ended, strict=True))
    now = utcnow()
    failures, paused, auth_failed_at = task
    subject = run.subject
    events: list[NewEvent] = [catalog.run_failed(subject, now, error, failures)]
    changes: dict[str, Any] = {}
    if error.get("http_status") in catalog.AUTH_REFUSED and auth_failed_at is None:
        changes["auth_failed_at"] = now
        events.append(catalog.task_auth_failed(subject, error))
    if pause_after and failures % pause_after == 0 and not paused:
        changes.update(paused=True, paused_reason=catalog.PAUSED_BY_FAILURES, next_run_at=None)
        events.append(catalog.task_paused(subject, failures, error))
    if changes:
        await session.execute(update(TASK).where(TASK.c.id == run.task_id).values(**changes))
    await append(session, run.tenant_id, events, now)
