"""A mapped task's health samples, written in its page's transaction.

Only tasks with a `health_mapping` come here (`LeasedRun.health_mapping`); a task
without one costs nothing (no query, no transaction where its ledger would use none).
The samples commit with the records they come from, so a worker killed anywhere leaves
both or neither: the resumed run finds the committed records unchanged and maps nothing
again. Lock order: the task and run rows (the page's), then the user's `health_user`
row (`health.ingest.store`), then the tenant's (a run's end writes its events last).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.health.wearable import store_records
from service.runs.ledger.run import LeasedRun
from service.runs.ledger.statements import RUN
from service.sync import Row


async def write_samples(
    session: AsyncSession, run: LeasedRun, rows: Sequence[Row], now: datetime
) -> None:
    """Map `rows` (the page's new and changed records) and store their samples; count
    them on the run. The source defaults to the task's id: stable across renames."""
    mapping = run.health_mapping
    if mapping is None or not rows or run.user_id is None:
        return
    datas = [row.data for row in rows]
    mapped = await store_records(
        session, run.tenant_id, run.user_id, mapping, run.task_id, datas, now
    )
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
