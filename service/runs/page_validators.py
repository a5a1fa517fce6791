"""SQL for the validators a conditional task's pages answered with."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import PageValidator
from service.models.types import utcnow
from service.sync.conditional import Validator


async def remember(session: AsyncSession, task_id: str, url_key: str, validator: Validator) -> None:
    await session.merge(
        PageValidator(
            task_id=task_id,
            url_key=url_key,
            etag=validator.etag,
            last_modified=validator.last_modified,
            next_page=validator.next_page,
            digest=validator.digest,
            records_seen=validator.records_seen,
            rejected=validator.rejected,
            updated_at=utcnow(),
        )
    )


async def all_for_task(session: AsyncSession, task_id: str) -> dict[str, Validator]:
    """Every validator of a task, by page key: one query per run instead of one per page."""
    rows = await session.execute(select(PageValidator).where(col(PageValidator.task_id) == task_id))
    return {
        row.url_key: Validator(
            row.etag, row.last_modified, row.next_page, row.digest, row.records_seen, row.rejected
        )
        for row in rows.scalars()
    }
