"""SQL for the validators a conditional task's pages answered with."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import PageValidator
from service.models.types import utcnow
from service.sync.conditional import Validator


async def find(session: AsyncSession, task_id: str, url_key: str) -> Validator | None:
    row = (
        await session.execute(
            select(PageValidator).where(
                col(PageValidator.task_id) == task_id, col(PageValidator.url_key) == url_key
            )
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    return Validator(row.etag, row.last_modified, row.next_page)


async def remember(session: AsyncSession, task_id: str, url_key: str, validator: Validator) -> None:
    await session.merge(
        PageValidator(
            task_id=task_id,
            url_key=url_key,
            etag=validator.etag,
            last_modified=validator.last_modified,
            next_page=validator.next_page,
            updated_at=utcnow(),
        )
    )
