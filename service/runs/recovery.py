"""The reconciler: the database says which runs should be moving; Redis may not know.

A worker killed with SIGKILL leaves its run `running` under a lease that stops being
renewed; a Redis restart or flush loses queued and deferred jobs. Every worker runs
this loop: it re-sends such runs. Sending is idempotent (job ids derive from the run
and the reason), and only a worker that wins the run's lease executes it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from service.broker.outage import RedisUnavailable
from service.broker.queue import Queue
from service.db import SessionMaker
from service.metrics import RESENT
from service.models import Run
from service.models.types import utcnow
from service.runs import repository

log = logging.getLogger(__name__)


_REASONS = {"queued": "queued", "retrying": "retrying", "running": "lease_expired"}
"""Why an orphan is re-sent, by its status (`backsync_reconciler_resent_total`)."""


def _job_suffix(run: Run) -> str | None:
    if run.status == "running":
        expired = run.lease_expires_at.timestamp() if run.lease_expires_at else 0
        return f"recover:{int(expired * 1000)}"
    if run.status == "retrying":
        return f"attempt:{run.attempt}"
    return None


async def reconcile_once(
    sessionmaker: SessionMaker, queue: Queue, queued_grace_seconds: float
) -> int:
    now = utcnow()
    async with sessionmaker() as session:
        runs = await repository.orphans(session, now, now - timedelta(seconds=queued_grace_seconds))
    sent = 0
    for run in runs:
        if await queue.enqueue_run(run.id, job_suffix=_job_suffix(run)):
            RESENT[_REASONS[run.status]].inc()
            sent += 1
    if sent:
        log.info("reconciler re-sent %d run(s)", sent)
    return len(runs)


async def reconcile_forever(
    sessionmaker: SessionMaker, queue: Queue, interval: float, queued_grace_seconds: float
) -> None:
    while True:
        try:
            await reconcile_once(sessionmaker, queue, queued_grace_seconds)
        except RedisUnavailable:  # logged once per outage (`service.broker.outage`); sent after it
            log.debug("reconcile pass: Redis is unavailable", exc_info=True)
        except Exception:
            log.warning("reconcile pass failed; retrying", exc_info=True)
        await asyncio.sleep(interval)
