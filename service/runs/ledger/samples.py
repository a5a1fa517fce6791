"""A mapped task's health samples, written in its page's transaction.

Only tasks with a `health_mapping` come here (`LeasedRun.health_mapping`); a task
without one costs nothing (no query, no transaction where its ledger would use none).
The samples commit with the records they come from, so a worker killed anywhere leaves
both or neither: the resumed run finds the committed records unchanged and maps nothing
again. Lock order on PostgreSQL: the user's `health_user` row (`health.ingest.store_samples`)
first, then the page's task and run rows and, on its last page, the tenant's (its
events): a phone's batch takes `health_user` before the tenant's row too, so neither
waits on the other in a circle. SQLite has one writer at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.health.wearable import Mapped, store_records
from service.runs.ledger.run import LeasedRun
from service.runs.ledger.statements import RUN
from service.sync import Row


async def write_samples(
    session: AsyncSession, run: LeasedRun, rows: Sequence[Row], now: datetime
) -> None:
    """Map `rows` (the page's new and changed records), store their samples and count
    them on the run."""
    await count_samples(session, run, await store_samples(session, run, rows, now))


async def store_samples(
    session: AsyncSession, run: LeasedRun, rows: Sequence[Row], now: datetime
) -> Mapped:
    """Map `rows` and store their samples. The source defaults to the task's id: stable
    across renames."""
    mapping = run.health_mapping
    if mapping is None or not rows or run.user_id is None:
        return Mapped(0, 0)
    datas = [row.data for row in rows]
    return await store_records(
        session, run.tenant_id, run.user_id, mapping, run.task_id, datas, now
    )


async def count_samples(session: AsyncSession, run: LeasedRun, mapped: Mapped) -> None:
    """Add to the run's `samples_written` / `samples_rejected`."""
    if mapped.written or mapped.rejected:
        c = RUN.c
        await session.execute(
            update(RUN)
            .where(c.id == run.run_id)
            .values(
                samples_written=c.samples_written + mapped.written,
                samples_rejected=c.samples_rejected + mapped.rejected,
            )
        )
