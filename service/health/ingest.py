"""The worker side of a batch: its samples into the store, one chunk per transaction.

Each chunk commits with everything it means, or not at all: the samples (whole rows,
written by the database's `service.health.writer`), the user's new `seq`, the batch's progress and
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

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from service.db import SessionMaker, transaction
from service.health import repository
from service.health.merge import Key, Plan, Stored, plan
from service.health.normalize import Normalized
from service.health.rollup import touched
from service.health.writer import Chunk, Write, writer_for
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
        stored = await store_samples(session, batch.tenant_id, batch.user_id, chunk, now)
        counts, seq = stored.counts, stored.seq
        finished = now if offset + len(chunk) >= len(samples) else None
        totals = await repository.advance(session, batch.id, len(chunk), counts, finished, now)
        if finished is not None:
            rejected = len(totals["rejections"])
            event = health_batch_completed(batch.id, batch.user_id, totals, rejected, seq)
            await append(session, batch.tenant_id, [event], now)
        return finished is not None


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What storing a list of samples did: how many had each verdict, and the user's
    last seq after them."""

    counts: dict[str, int]
    seq: int


async def store_samples(
    session: AsyncSession, tenant_id: str, user_id: str, samples: list[Normalized], now: datetime
) -> StoreResult:
    """Store normalised samples in the caller's transaction: the de-duplication rule
    applied under the user's lock, each write with the user's next seq.

    The one way samples enter the store (a batch's chunks; a task's mapped records), so
    the rule, the change feed's order and the daily rollup's invalidation
    (`service.health.rollup`) hold for all.
    The user's row stays locked until the caller commits."""
    base = await repository.lock_user(session, tenant_id, user_id)
    writer, chunk = writer_for(session), Chunk(session, tenant_id, user_id, now)
    before: dict[Key, Stored] = {}
    planned = plan(samples, before)  # as if none were stored: inserted outright if so
    writes = _numbered(planned, base, before)
    if not await writer.insert_new(chunk, writes):
        keys = [(sample.source, sample.id) for sample in samples]
        before = await writer.stored(chunk, keys)
        planned = plan(samples, before)
        writes = _numbered(planned, base, before)
        await writer.upsert(chunk, writes)
    seq = base + len(writes)
    if writes:
        await repository.set_seq(session, tenant_id, user_id, seq)
        olds = (before.get(key) for key in planned.writes)
        stale = touched(planned.writes.values(), olds)
        await repository.forget_days(session, tenant_id, user_id, stale)
    return StoreResult({str(verdict): count for verdict, count in planned.counts.items()}, seq)


def _numbered(planned: Plan, base: int, before: dict[Key, Stored]) -> list[Write]:
    """The plan's writes, each with the user's next seq after `base`."""
    return [
        Write(sample, base + n, key not in before)
        for n, (key, sample) in enumerate(planned.writes.items(), start=1)
    ]


async def fail(sessionmaker: SessionMaker, batch_id: str, error: str) -> None:
    async with transaction(sessionmaker) as session:
        await repository.fail(session, batch_id, error, utcnow())
