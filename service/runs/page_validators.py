"""SQL for the validators a conditional task's pages answered with."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import PageValidator, metadata
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
    rows = await session.execute(_ALL_FOR_TASK, {"task_id": task_id})
    return {key: Validator(*fields) for key, *fields in rows}


_TABLE = metadata.tables["page_validator"]
_ALL_FOR_TASK = select(
    # Core rows, not ORM objects: a conditional resync reads one per page, and building
    # the objects cost more than the query.
    _TABLE.c.url_key,
    _TABLE.c.etag,
    _TABLE.c.last_modified,
    _TABLE.c.next_page,
    _TABLE.c.digest,
    _TABLE.c.records_seen,
    _TABLE.c.rejected,
).where(_TABLE.c.task_id == bindparam("task_id"))
