"""A wearable task's records into health samples, inside the transaction that stores
the records (the run ledger calls this for tasks with a `health_mapping`).

The records given are the page's changed ones (new, or another content than stored):
an unchanged record's samples are stored already. Their samples go through the same
checks (`normalize`) and the same upsert (`ingest.store_samples`) as a phone's, so re-mapping a
record whose samples did not change writes nothing and takes no change-feed seq.

A changed record updates its samples by id (a heart-rate series that grew adds its new
points and leaves the others unchanged). A sample that the new version of a record no
longer yields is kept: the mapping sees only the record as it is now, and wearable
APIs revise values, they do not take points back. A client that must remove one sends
it with `deleted: true` under the same source and id.

A sample the mapping cannot make (a missing path, an impossible value) is rejected
without the record: the record is stored as the upstream sent it, the run counts the
rejection (`stats.samples_rejected`) and the worker logs the first reasons of a page.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from service.health.ingest import store_samples
from service.health.mapping import HealthMapping, samples_of
from service.health.merge import WRITES
from service.health.normalize import Normalized

log = logging.getLogger(__name__)

LOGGED_REASONS = 3
"""Rejection reasons logged per page (a broken mapping would otherwise log every record)."""


CHUNK = 1000
"""Samples per look-up and upsert: a page of intraday series holds tens of thousands, and
both databases cap a statement's parameters (SQLite 32,766, asyncpg 32,767)."""


@dataclass(frozen=True, slots=True)
class Mapped:
    written: int
    """Samples inserted, updated or deleted."""
    rejected: int


async def store_records(
    session: AsyncSession,
    tenant_id: str,
    user_id: str,
    mapping: HealthMapping,
    default_source: str,
    records: Sequence[str],
    now: datetime,
) -> Mapped:
    """Map `records` (canonical JSON, as stored) and store their samples in `session`."""
    samples: list[Normalized] = []
    reasons: list[str] = []
    for data in records:
        accepted, rejected = samples_of(orjson.loads(data), mapping, default_source, user_id, now)
        samples.extend(accepted)
        reasons.extend(rejected)
    if reasons:
        log.info(
            "%d health samples rejected on this page, e.g. %s",
            len(reasons),
            "; ".join(reasons[:LOGGED_REASONS]),
        )
    written = 0
    for start in range(0, len(samples), CHUNK):
        chunk = samples[start : start + CHUNK]
        counts = (await store_samples(session, tenant_id, user_id, chunk, now)).counts
        written += sum(counts.get(str(verdict), 0) for verdict in WRITES)
    return Mapped(written, len(reasons))
