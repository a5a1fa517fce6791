"""The worker side of a batch: its samples into the store, one chunk per transaction.

Each chunk commits with everything it means, or not at all: the samples (whole rows,
one upsert statement executed per row), the user's new `seq`, the batch's progress and
counts and, with the last chunk, the batch's completion and its
`health.batch.completed` event. A worker killed mid-chunk loses only that chunk's
uncommitted work; the batch stays `pending`, the reconciler re-sends it, and the next
worker resumes at `ingested`.

Locks, in the order every writer takes them: the batch row (two workers on one batch
take turns, each chunk reading `ingested` under the lock), the user's `health_user`
row (the user's changes get their seqs and commit in that order; the de-duplication
rule reads stored samples only under it), then the tenant row (the event's seq,
`service.notifications.outbox`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.db import SessionMaker, transaction
from service.health import repository
from service.health.merge import plan
from service.health.normalize import Normalized
from service.models import HealthBatch
from service.models.types import utcnow
from service.notifications.catalog import health_batch_completed
from service.notifications.outbox import append


async def ingest(sessionmaker: SessionMaker, batch_id: str, chunk_size: int) -> None:
    """Store a pending batch, from where it stands; a batch that is not pending (done,
    failed, unknown) is left alone, so the job may run any number of times."""
    async with sessionmaker() as session:
        batch = await repository.pending_batch(session, batch_id)
    if batch is None:
        return
    samples = [Normalized.from_json(item) for item in batch.samples or []]
    while not await _next_chunk(sessionmaker, batch, samples, chunk_size):
        pass


async def _next_chunk(
    sessionmaker: SessionMaker, batch: HealthBatch, samples: list[Normalized], size: int
) -> bool:
    """Store the next chunk in one transaction; True when the batch is no longer pending."""
    async with transaction(sessionmaker) as session:
        offset = await repository.lock_pending(session, batch.id)
        if offset is None:
            return True
        chunk = samples[offset : offset + size]
        now = utcnow()
        counts, seq = await store(session, batch.tenant_id, batch.user_id, chunk, now)
        finished = now if offset + len(chunk) >= len(samples) else None
        totals = await repository.advance(session, batch.id, len(chunk), counts, finished, now)
        if finished is not None:
            rejected = len(totals["rejections"])
            event = health_batch_completed(batch.id, batch.user_id, totals, rejected, seq)
            await append(session, batch.tenant_id, [event], now)
        return finished is not None


async def store(
    session: AsyncSession, tenant_id: str, user_id: str, samples: list[Normalized], now: datetime
) -> tuple[dict[str, int], int]:
    """Apply the de-duplication rule to `samples` under the user's lock and write what
    changes, each write with the user's next seq. Returns the verdict counts and the
    user's seq after them. The one way samples are stored: a phone's batch (a chunk at a
    time) and a wearable task's page (`service.health.wearable`) both come through here."""
    base = await repository.lock_user(session, tenant_id, user_id)
    keys = [(sample.source, sample.id) for sample in samples]
    planned = plan(samples, await repository.stored(session, tenant_id, user_id, keys))
    rows = [
        _row(tenant_id, user_id, sample, base + n, now)
        for n, sample in enumerate(planned.writes.values(), start=1)
    ]
    await repository.upsert(session, rows)
    if rows:
        await repository.set_seq(session, tenant_id, user_id, base + len(rows))
    return {str(verdict): count for verdict, count in planned.counts.items()}, base + len(rows)


def _row(
    tenant_id: str, user_id: str, sample: Normalized, seq: int, now: datetime
) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "user_id": user_id,
        "source": sample.source,
        "id": sample.id,
        "type": sample.type,
        "value": sample.value,
        "unit": sample.unit,
        "start_at": _moment(sample.start),
        "end_at": _moment(sample.end),
        "tz_offset_minutes": sample.tz_offset_minutes,
        "timezone": sample.timezone,
        "device": sample.device,
        "recording_method": sample.recording_method,
        "metadata": sample.metadata,
        "stage": sample.stage,
        "modified_at": _moment(sample.modified_at),
        "deleted": sample.deleted,
        "hash": sample.hash,
        "seq": seq,
        "created_at": now,
        "updated_at": now,
    }


def _moment(iso: str | None) -> datetime | None:
    return None if iso is None else datetime.fromisoformat(iso)


async def fail(sessionmaker: SessionMaker, batch_id: str, error: str) -> None:
    async with transaction(sessionmaker) as session:
        await repository.fail(session, batch_id, error, utcnow())
