"""When a task's schedule fires next: every N seconds or a 5-field cron in a time zone.

A pure function of the schedule, the task and a moment, shared by the API (which shows
`next_run_at` and recomputes it when the schedule changes) and the worker's scheduler
(which, having fired a slot, asks for the first one after now: slots missed while
everything was down give one catch-up run, not one each).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def next_run_at(schedule: dict[str, Any] | None, task_id: str, after: datetime) -> datetime | None:
    """The first slot of `schedule` strictly after `after` (aware UTC), or None for a task
    without a schedule."""
    raise NotImplementedError
