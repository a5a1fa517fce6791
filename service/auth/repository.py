from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.db import Statements
from service.models import ApiKey, Tenant, metadata


async def tenant_by_name(session: AsyncSession, name: str) -> Tenant | None:
    result = await session.execute(select(Tenant).where(col(Tenant.name) == name))
    return result.scalar_one_or_none()


async def key_by_prefix(session: AsyncSession, prefix: str) -> ApiKey | None:
    result = await session.execute(select(ApiKey).where(col(ApiKey.prefix) == prefix))
    return result.scalar_one_or_none()


_KEY = metadata.tables["api_key"]
_CHECKED_KEY = select(_KEY.c.tenant_id, _KEY.c.prefix, _KEY.c.key_hash, _KEY.c.revoked_at).where(
    _KEY.c.prefix == bindparam("prefix")
)


async def checked_key(db: Statements, prefix: str) -> Mapping[Any, Any] | None:
    """What verifying a key reads of it, in one Core statement: on every API process,
    each key once per `BACKSYNC_API_KEY_CACHE_SECONDS` (through an ORM session a lookup
    costs about 1 ms of CPU: a hundred keys falling due together, as in bench/api.py,
    were some 100 ms of the process at once)."""
    return await db.first(_CHECKED_KEY, {"prefix": prefix}, retry=True)
