"""The arq job for health batches, and the reconciler that re-sends lost ones.

The batch is in the database; Redis only carries its id. A batch stays `pending` until
its last chunk commits, so one whose job was lost (Redis flushed, its worker killed)
is found by its age: pending with no progress for `queued_grace_seconds`. Each re-send
is counted on the row and names a new job (`health:<id>:resend:<n>`), because arq
keeps a killed job's id busy until its timeout.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from service.broker.queue import Queue
from service.config import Settings
from service.db import SessionMaker, transaction
from service.health import repository
from service.health.ingest import fail, ingest
from service.logs import bind_log_context
from service.models.types import utcnow

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError, OSError)
"""Failures of the database or the network: the batch is re-sent and resumes. Anything
else is a batch that would fail the same way again: it is marked `failed`."""


async def ingest_health_batch(ctx: dict[str, Any], batch_id: str) -> None:
    sessionmaker: SessionMaker = ctx["sessionmaker"]
    settings: Settings = ctx["settings"]
    bind_log_context(batch_id=batch_id)
    try:
        await ingest(sessionmaker, batch_id, settings.health_ingest_chunk)
    except TRANSIENT:
        raise
    except Exception as exc:
        log.exception("health batch %s failed", batch_id)
        await fail(sessionmaker, batch_id, f"ingest failed ({type(exc).__name__})")


async def resend_lost_batches(sessionmaker: SessionMaker, queue: Queue, grace: float) -> int:
    now = utcnow()
    cutoff = now - timedelta(seconds=grace)
    async with sessionmaker() as session:
        stale = await repository.stale_pending(session, cutoff)
    sent = 0
    for batch_id in stale:
        async with transaction(sessionmaker) as session:
            sends = await repository.mark_resent(session, batch_id, cutoff, now)
        if sends is not None:
            await queue.enqueue_health_batch(batch_id, job_suffix=f"resend:{sends}")
            sent += 1
    if sent:
        log.info("re-sent %d health batch(es)", sent)
    return sent


async def resend_forever(
    sessionmaker: SessionMaker, queue: Queue, interval: float, grace: float
) -> None:
    while True:
        try:
            await resend_lost_batches(sessionmaker, queue, grace)
        except Exception:
            log.warning("health batch reconcile pass failed; retrying", exc_info=True)
        await asyncio.sleep(interval)
