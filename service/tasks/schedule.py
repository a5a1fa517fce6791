"""When a task's schedule fires next: every N seconds or a 5-field cron in a time zone.

A pure function of the schedule, the task and a moment, shared by the API (which shows
`next_run_at` and recomputes it when the schedule changes) and the worker's scheduler
(which, having fired a slot, asks for the first one after now: slots missed while
everything was down give one catch-up run, not one each).

`every_seconds` slots sit on a grid fixed to the Unix epoch, shifted by a phase taken from
a hash of the task id, so that a thousand tasks registered at once with the same interval
spread over it instead of firing together, and a slot never drifts however late a run
starts or ends. Each slot is then delayed by its own jitter, also a hash (of the task id
and the slot number), so that the API and the scheduler always agree and recomputing is
idempotent. With `jitter_seconds < every_seconds` (the schema's rule) jittered slots keep
their order: exactly one per period.

Cron expressions are evaluated by cronsim, which follows Debian cron across DST changes:
a wall-clock time that does not exist that day fires once at the next valid instant, one
that occurs twice fires once (its first occurrence), while expressions with a wildcard
hour (`*/30 * * * *`) fire at every real instant that matches.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def next_run_at(schedule: dict[str, Any] | None, task_id: str, after: datetime) -> datetime | None:
    """The first slot of `schedule` strictly after `after` (aware UTC), or None for a task
    without a schedule.

    Raises ValueError for a schedule it cannot evaluate: one the schema would refuse, such
    as a cron expression stored before expressions were validated.
    """
    if after.tzinfo is None:
        raise ValueError("`after` must be timezone-aware")
    if schedule is None:
        return None
    if schedule.get("every_seconds") is not None:
        return _next_every(
            schedule["every_seconds"], schedule.get("jitter_seconds") or 0, task_id, after
        )
    if schedule.get("cron") is not None:
        return _next_cron(schedule["cron"], schedule.get("timezone") or "UTC", after)
    raise ValueError(f"a schedule needs every_seconds or cron: {schedule!r}")


def phase(task_id: str, every: int) -> int:
    """Where in each period of `every` seconds the task's slots sit (0 ≤ phase < every)."""
    return _hash(f"phase\x00{task_id}") % every


def jitter(task_id: str, slot: int, jitter_seconds: int) -> int:
    """The delay of slot `slot` (the one at phase + slot * every seconds after the epoch),
    0..jitter_seconds."""
    return _hash(f"jitter\x00{task_id}\x00{slot}") % (jitter_seconds + 1)


def _next_every(every: int, jitter_seconds: int, task_id: str, after: datetime) -> datetime:
    # Slots are whole seconds, so "strictly after `after`" is "after its whole second".
    now = (after - _EPOCH) // _SECOND
    offset = phase(task_id, every)
    # Slot k starts at offset + k*every and fires 0..jitter_seconds later. The candidates
    # run from the first slot that may still fire after `now` to the first that starts
    # after it; with jitter_seconds < every (validated) no later slot can fire earlier.
    first = (now - offset - jitter_seconds) // every
    last = (now - offset) // every + 1 + jitter_seconds // every
    fires = [
        offset + k * every + jitter(task_id, k, jitter_seconds) for k in range(first, last + 1)
    ]
    return _EPOCH + min(at for at in fires if at > now) * _SECOND


@functools.lru_cache(maxsize=256)
def _next_cron(expression: str, timezone: str, after: datetime) -> datetime | None:
    """Cached: a cron slot does not depend on the task, and the scheduler asks for the
    slot after one `now` for a whole batch of tasks, mostly sharing a few expressions
    (cronsim costs 80 µs a task; `bench/scheduler.py`)."""
    after = after.astimezone(UTC)
    # Started inside a repeated hour (the second pass, fold=1), cronsim can return that
    # hour's first pass again, which is already over: skip what is not after `after`.
    try:
        slots = CronSim(expression, after.astimezone(ZoneInfo(timezone)))
    except (CronSimError, ZoneInfoNotFoundError) as exc:
        raise ValueError(f"cannot evaluate cron {expression!r} in {timezone!r}: {exc}") from exc
    for local in slots:
        at = local.astimezone(UTC)
        if at > after:
            return at
    return None  # cronsim stops looking 50 years ahead


def _hash(text: str) -> int:
    """A stable 64-bit hash (Python's hash() of a str changes between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
