"""Live progress as Server-Sent Events: one `progress` event per committed page and a
final `status` event, then the stream ends.

Progress is read from the run row (the truth, written by whichever worker holds the
run), so it works across any number of API and worker processes with no pub/sub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from service.db import SessionMaker
from service.models import FINAL_STATUSES
from service.runs import repository
from service.runs.schemas import RunOut
from service.runs.service import to_out

KEEPALIVE_SECONDS = 15.0


def _event(name: str, run: RunOut) -> str:
    return f"event: {name}\nid: {run.stats.pages}\ndata: {run.model_dump_json()}\n\n"


async def run_events(
    sessionmaker: SessionMaker, run_id: str, poll_seconds: float = 0.25
) -> AsyncIterator[str]:
    last: tuple[object, ...] | None = None
    quiet_since = time.monotonic()
    while True:
        async with sessionmaker() as session:
            found = await repository.get(session, run_id)
        if found is None:  # the task (and its runs) was deleted meanwhile
            return
        run = to_out(found)
        if run.status in FINAL_STATUSES:
            yield _event("status", run)
            return
        state = (run.status, run.attempt, run.stats.pages, run.cancel_requested)
        if state != last:
            yield _event("progress", run)
            last, quiet_since = state, time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(poll_seconds)
