"""The scheduler: starts the runs of schedule slots that fall due. One runs in every
worker process; the database decides which of them starts each slot.

A tick asks the database one indexed question when nothing is due — the soonest
`next_run_at` of any task (null for paused and unscheduled tasks) — and then sleeps
until that moment, or until an API process says a schedule changed (Redis pub/sub), or
`MAX_SLEEP_SECONDS` as a safety net. When slots are due, it claims them in batches: a
read of the due rows that locks them (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so
schedulers in other workers pass them by; SQLite: the transaction holds the database's
write lock from its start, so one scheduler claims at a time), starts a run for each
unless the task's previous run is still active (then the slot is counted in
`skipped_runs`), and moves each task to its first slot after now — slots missed while
everything was down give one catch-up run, not one each. Runs are enqueued after the
commit; one whose enqueue is lost (Redis away) is re-sent by the reconciler, from the
database.

A batch is three statements and one Redis round trip whatever its size, the same SQL
on both databases: the claim, one INSERT for its runs (`start_scheduled`), one UPDATE
moving its tasks (`_move_statement`), then one script enqueueing every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import datetime
from typing import Any, NamedTuple

from redis.asyncio import Redis
from sqlalchemy import (
    ColumnClause,
    Integer,
    String,
    TextClause,
    bindparam,
    column,
    func,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from service import metrics
from service.broker.channel import Subscription
from service.broker.queue import Queue, schedules_channel
from service.db import SessionMaker, locked_transaction, transaction, values_rows
from service.models import metadata
from service.models.types import UTCDateTime, utcnow
from service.runs.service import DueTask, start_scheduled
from service.tasks.schedule import next_run_at

log = logging.getLogger(__name__)

BATCH = 500
"""Slots claimed per transaction: each batch costs a few round trips through an event
loop shared with the runs the worker executes, so fewer, larger batches dispatch a
burst faster (`bench/scheduler.py`); the first runs are enqueued after about 0.1 s."""
MAX_SLEEP_SECONDS = 60.0
"""The longest a scheduler sleeps without a due slot or a schedule change to wake it
(a change published while this worker was not subscribed, Redis away)."""

_TASK = metadata.tables["task"]
_SOONEST = select(func.min(_TASK.c.next_run_at))
_CLAIM = (
    select(
        _TASK.c.id,
        _TASK.c.tenant_id,
        _TASK.c.source,
        _TASK.c.schedule,
        _TASK.c.paused,
        _TASK.c.next_run_at,
    )
    .where(_TASK.c.next_run_at <= bindparam("now", type_=UTCDateTime()))
    .order_by(_TASK.c.next_run_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
"""Read in a `locked_transaction`: PostgreSQL locks the rows it returns and passes over
rows other schedulers hold; SQLite holds the database's write lock from the start. The
claim writes nothing itself: a write here (as this claim once was, an UPDATE setting
`next_run_at` to itself) costs every claimed task one more row version and index entry."""
_MOVE_COLUMNS: list[ColumnClause[Any]] = [  # the VALUES list of `_move_statement`
    column("id", String()),
    column("at", UTCDateTime()),
    column("skipped", Integer()),
]
_MOVE_NAMES = [c.key for c in _MOVE_COLUMNS]


@functools.lru_cache(maxsize=64)
def _move_statement(rows: int) -> TextClause:
    """Moves a batch's tasks to their next slots and counts their skips, in one
    statement (half the time of one UPDATE per task, executemany; `bench/scheduler.py`),
    the same SQL on both databases. Built once per batch size."""
    values, binds = values_rows(_MOVE_COLUMNS, rows, _MOVE_NAMES)
    return text(
        "UPDATE task SET next_run_at = v.column2, "  # noqa: S608 - constant SQL
        "skipped_runs = task.skipped_runs + v.column3 "
        f"FROM (VALUES {values}) AS v WHERE task.id = v.column1"
    ).bindparams(*binds)


_UNSLOTTED = select(_TASK.c.id, _TASK.c.schedule).where(
    _TASK.c.next_run_at.is_(None), _TASK.c.paused.is_(False)
)
_SET_SLOT = (
    update(_TASK)
    .where(_TASK.c.id == bindparam("task_id"), _TASK.c.next_run_at.is_(None))
    .values(next_run_at=bindparam("at", type_=UTCDateTime()))
)


class Scheduler:
    def __init__(self, sessionmaker: SessionMaker, queue: Queue) -> None:
        self._sessionmaker, self._queue = sessionmaker, queue
        self._changed = asyncio.Event()

    def schedules_changed(self, _message: bytes = b"") -> None:
        self._changed.set()

    async def run_forever(self, subscription: Subscription | None = None) -> None:
        """Tick, then sleep until the next slot or a change; never stops on an error."""
        if subscription is not None:
            subscription.start()
        try:
            with contextlib.suppress(Exception):  # a failed heal is tried at the next start
                await heal(self._sessionmaker)
            while True:
                self._changed.clear()  # a change during the tick wakes the sleep at once
                try:
                    delay = await self.tick()
                except Exception:
                    log.warning("scheduler tick failed; trying again", exc_info=True)
                    delay = 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(delay, MAX_SLEEP_SECONDS))
        finally:
            if subscription is not None:
                await subscription.close()

    async def tick(self) -> float:
        """Start every slot due now; returns the seconds until the next one."""
        while True:
            now = utcnow()
            async with self._sessionmaker() as session:
                soonest: datetime | None = (await session.execute(_SOONEST)).scalar()
            if soonest is None:
                return MAX_SLEEP_SECONDS
            if soonest > now:
                return (soonest - now).total_seconds()
            if await self._fire_all(now) == 0:  # due, but another scheduler has them
                return 0.05

    async def _fire_all(self, now: datetime) -> int:
        """`fire_due` until a batch comes back short: a full one means more may be due,
        and asking for the soonest slot in between would only say so."""
        fired = total = await self.fire_due(now)
        while fired == BATCH:
            fired = await self.fire_due(utcnow())
            total += fired
        return total

    async def fire_due(self, now: datetime) -> int:
        """Claim up to `BATCH` due slots and start their runs; returns how many slots.

        Three statements and one Redis round trip whatever the batch's size (claim,
        insert the runs, move the tasks; enqueue after the commit): 200 slots took
        about 30 ms this way, 340 ms one by one (`python -m bench.scheduler`).
        """
        async with locked_transaction(self._sessionmaker) as session:
            result = await session.execute(_CLAIM, {"now": now, "limit": BATCH})
            claimed = [_Claimed(*row) for row in result]
            due = [DueTask(row.id, row.tenant_id, row.source) for row in claimed if _live(row)]
            started = await start_scheduled(session, due, now)
            await _move_all(session, [_move(row, started, now) for row in claimed])
        await self._enqueue(list(started.values()))
        metrics.scheduler_slots([row.next_run_at for row in claimed if _live(row)], utcnow())
        if claimed:
            skipped = len(due) - len(started)
            log.info("scheduler started %d run(s), skipped %d", len(started), skipped)
        return len(claimed)

    async def _enqueue(self, run_ids: list[str]) -> None:
        try:
            await self._queue.enqueue_runs(run_ids)
        except Exception:  # the runs are queued in the database: the reconciler re-sends
            log.warning("could not enqueue %d scheduled run(s)", len(run_ids), exc_info=True)


class _Claimed(NamedTuple):
    """A claimed task: the columns `_CLAIM` reads."""

    id: str
    tenant_id: str
    source: dict[str, Any]
    schedule: dict[str, Any] | None
    paused: bool
    next_run_at: datetime
    """The slot that fell due (how late it starts: `backsync_scheduler_slot_delay_seconds`)."""


def _live(task: _Claimed) -> bool:
    """Not paused and still scheduled (a task changed without clearing its slot is not)."""
    return not task.paused and bool(task.schedule)


def _move(task: _Claimed, started: dict[str, str], now: datetime) -> tuple[str, Any, int]:
    """Where a claimed task goes: its first slot after now (none when it is not live),
    and one more skipped slot when it was live but got no run (KEEP)."""
    if not _live(task):
        return task.id, None, 0
    return task.id, _slot(task.id, task.schedule, now), int(task.id not in started)


async def _move_all(session: AsyncSession, moves: list[tuple[str, Any, int]]) -> None:
    params = {
        f"{name}_{row}": value
        for row, move in enumerate(moves)
        for name, value in zip(_MOVE_NAMES, move, strict=True)
    }
    if moves:
        await session.execute(_move_statement(len(moves)), params)


def _slot(task_id: str, schedule: dict[str, Any] | None, now: datetime) -> datetime | None:
    """The task's first slot after now; None (never again, logged) for a schedule that
    cannot be evaluated, such as a cron stored before cron expressions were checked."""
    try:
        return next_run_at(schedule, task_id, now)
    except ValueError:
        log.warning("task %s: schedule %r cannot be evaluated", task_id, schedule)
        return None


async def heal(sessionmaker: SessionMaker) -> int:
    """Give a first slot to active scheduled tasks that have none (stored before the
    scheduler existed): once, when a worker starts. Reads two columns of the tasks
    without a slot; writes only the scheduled ones."""
    now = utcnow()
    async with transaction(sessionmaker) as session:
        rows = await session.execute(_UNSLOTTED)
        slots = {task_id: _slot(task_id, schedule, now) for task_id, schedule in rows if schedule}
        for task_id, slot in slots.items():
            await session.execute(_SET_SLOT, {"task_id": task_id, "at": slot})
    if slots:
        log.info("scheduler gave %d scheduled task(s) their first slot", len(slots))
    return len(slots)


def subscription(queue_name: str, redis: Redis, scheduler: Scheduler) -> Subscription:
    """Wakes `scheduler` whenever an API process publishes a schedule change."""
    return Subscription(
        redis,
        schedules_channel(queue_name),
        scheduler.schedules_changed,
        purpose="schedule changes",
    )
