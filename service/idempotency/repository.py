"""SQL for `idempotency_key` rows.

A row's `created_at` doubles as its owner's token: whoever claimed the key completes or
releases it only while the row is still the one it inserted (a lapsed claim may have
been taken over, an expired record replaced).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import IdempotencyRecord

Row = IdempotencyRecord


def _is(tenant_id: str, scope: str, key: str) -> list[Any]:
    return [col(Row.tenant_id) == tenant_id, col(Row.scope) == scope, col(Row.key) == key]


async def get(session: AsyncSession, tenant_id: str, scope: str, key: str) -> Row | None:
    return await session.get(Row, (tenant_id, scope, key))


async def insert(session: AsyncSession, row: Row) -> None:
    """Raises `IntegrityError` (at flush) when the key is taken."""
    session.add(row)
    await session.flush()


async def delete_expired(
    session: AsyncSession, tenant_id: str, scope: str, key: str, now: datetime
) -> None:
    await _execute(
        session, delete(Row).where(*_is(tenant_id, scope, key), col(Row.expires_at) <= now)
    )


async def delete_owned(
    session: AsyncSession, tenant_id: str, scope: str, key: str, created_at: datetime
) -> bool:
    statement = delete(Row).where(*_is(tenant_id, scope, key), col(Row.created_at) == created_at)
    return await _execute(session, statement) > 0


async def complete(
    session: AsyncSession,
    tenant_id: str,
    scope: str,
    key: str,
    created_at: datetime,
    *,
    status_code: int,
    body: str,
    headers: dict[str, str],
) -> bool:
    """Store the response on the caller's own in-flight row; False if it is gone."""
    statement = (
        update(Row)
        .where(
            *_is(tenant_id, scope, key),
            col(Row.created_at) == created_at,
            col(Row.state) == "in_flight",
        )
        .values(state="completed", status_code=status_code, body=body, headers=headers)
    )
    return await _execute(session, statement) > 0


async def purge_expired(session: AsyncSession, now: datetime, limit: int) -> int:
    """Delete up to `limit` expired rows, any tenant's (rows another purge holds are
    skipped on PostgreSQL, so concurrent purges neither wait nor deadlock)."""
    expired = (
        select(col(Row.tenant_id), col(Row.scope), col(Row.key))
        .where(col(Row.expires_at) <= now)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    pk = tuple_(col(Row.tenant_id), col(Row.scope), col(Row.key))
    return await _execute(session, delete(Row).where(pk.in_(expired)))


async def _execute(session: AsyncSession, statement: Any) -> int:
    """A plain SQL write (no ORM session sync: these sessions hold no loaded rows)."""
    result = await session.execute(statement, execution_options={"synchronize_session": False})
    return _count(result)


def _count(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
