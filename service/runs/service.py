"""Triggering, reading and cancelling runs (the API side)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

from service.db import QuickStatements, Statements
from service.errors import Conflict, InvalidInput, NotFound
from service.ids import new_id
from service.models import Run
from service.models.types import utcnow
from service.pagination import decode_cursor, page_cursor
from service.runs import repository
from service.runs.schemas import RunOut, RunPage, RunStats, TriggerIn
from service.tasks.schemas import RunError
from service.tasks.service import get_task


def run_options(source: dict[str, Any], body: TriggerIn | None = None) -> dict[str, Any]:
    """What a run of a task with `source` does beyond a plain sync, fixed now for all its
    attempts: a task changed while it runs must not change what an attempt resumes into."""
    body = body or TriggerIn()
    if body.full_refresh and body.backfill is not None:
        raise InvalidInput.at(["body"], "give full_refresh or backfill, not both")
    incremental = bool(source.get("incremental"))
    if body.backfill is not None:
        if not incremental:
            raise InvalidInput.at(
                ["body", "backfill"], "backfill needs source.incremental on the task"
            )
        return {"backfill": {"from": body.backfill.from_, "to": body.backfill.to}}
    options: dict[str, Any] = {"full_refresh": True} if body.full_refresh else {}
    if source.get("detect_deletions") and (body.full_refresh or not incremental):
        options["sweep"] = True  # it reads the whole collection: what it misses is gone
    return options


async def trigger(
    db: Statements,
    tenant_id: str,
    task_id: str,
    body: TriggerIn | None = None,
    trigger: str = "manual",
    not_before: datetime | None = None,
) -> tuple[RunOut, bool]:
    """A new queued run, or the task's active one (returns created=False; its options
    stay as they were). A new run with `not_before` waits until then (its
    `next_attempt_at`; workers do not claim it earlier), so that pushes arriving
    meanwhile coalesce into it.

    A partial unique index allows one active run per task, so two racing triggers
    (any number of API processes) still give one run.

    Single statements (`db`): the task with its active run, then, only without one, the
    insert; each atomic on its own, so the API runs them outside any transaction
    (`QuickStatements`: a trigger of a task with an active run is one round trip; it
    was BEGIN, three ORM statements and COMMIT, bench/api.py), a push inside its own.
    """
    found = await repository.task_and_active(db, tenant_id, task_id)
    if found is None:
        raise NotFound(f"task {task_id} not found")
    options = run_options(found["task_source"], body)
    for _ in range(3):  # the active run may end between the insert and the read
        if found["id"] is not None:
            return out_of_row(found), False
        run = Run(
            id=new_id("run"),
            task_id=task_id,
            tenant_id=tenant_id,
            trigger=trigger,
            options=options,
            next_attempt_at=not_before,
        )
        created = await repository.insert_unless_active(db, run)
        if created is not None:
            return out_of_row(created), True
        found = await repository.task_and_active(db, tenant_id, task_id)
        if found is None:
            raise NotFound(f"task {task_id} not found")
    raise Conflict("the task's runs are changing too fast; try again")


async def start_scheduled(
    session: AsyncSession, due: Sequence[DueTask], now: datetime
) -> dict[str, str]:
    """The runs of schedule slots, in one statement: {task id: run id}. A task whose
    previous run is still queued, running or retrying gets none: the slot is skipped,
    not stacked (WorkManager's KEEP)."""
    template = Run(id="", task_id="", tenant_id="", trigger="schedule", created_at=now)
    rows = [
        repository.RunRow(new_id("run"), task.id, task.tenant_id, run_options(task.source))
        for task in due
    ]
    started = await repository.insert_many_unless_active(session, template, rows)
    return {task_id: run_id for run_id, task_id in started}


class DueTask(NamedTuple):
    """What starting a scheduled run needs of its task."""

    id: str
    tenant_id: str
    source: dict[str, Any]


async def get_run(session: AsyncSession, tenant_id: str, run_id: str) -> Run:
    run = await repository.get_for_tenant(session, tenant_id, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


async def list_runs(
    session: AsyncSession, tenant_id: str, task_id: str, limit: int, cursor: str | None
) -> RunPage:
    task = await get_task(session, tenant_id, task_id)
    runs = await repository.page_for_task(session, task.id, decode_cursor(cursor), limit)
    return RunPage(
        items=[to_out(run) for run in runs[:limit]],
        next_cursor=page_cursor([run.id for run in runs], limit),
    )


async def cancel(session: AsyncSession, tenant_id: str, run_id: str) -> Run:
    """Queued or retrying runs end now; a running one stops at its next page boundary.

    Each a conditional UPDATE, not a read then a write: a worker claiming the queued
    run in between would otherwise find it running and be overwritten to `cancelled`
    while it fetches (on PostgreSQL the UPDATE waits for the claim's commit and then no
    longer matches; the run is then asked to stop instead)."""
    ended = await repository.end_waiting(session, tenant_id, run_id, utcnow())
    if not ended and not await repository.ask_to_stop(session, tenant_id, run_id):
        run = await get_run(session, tenant_id, run_id)  # not found: 404
        raise Conflict(f"run {run_id} already finished ({run.status})")
    return await get_run(session, tenant_id, run_id)


async def read_run(quick: QuickStatements, tenant_id: str, run_id: str) -> RunOut:
    """`get_run` for showing only: one Core statement, no ORM object."""
    row = await repository.read_for_tenant(quick, tenant_id, run_id)
    if row is None:
        raise NotFound(f"run {run_id} not found")
    return out_of_row(row)


def out_of_row(row: Mapping[Any, Any]) -> RunOut:
    """A `RunOut` of a row of `repository.SHOWN_COLUMNS`."""
    return RunOut(
        id=row["id"],
        task_id=row["task_id"],
        status=row["status"],
        trigger=row["trigger"],
        attempt=row["attempt"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        next_attempt_at=row["next_attempt_at"],
        cancel_requested=row["cancel_requested"],
        waiting_reason=row["waiting_reason"],
        stats=RunStats.model_validate(row),
        error=RunError.model_validate(row["error"]) if row["error"] else None,
        attempts=row["attempts"],
    )


def to_out(run: Run) -> RunOut:
    return out_of_row({name: getattr(run, name) for name in repository.SHOWN_COLUMNS})
