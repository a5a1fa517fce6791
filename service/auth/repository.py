from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import ApiKey, Tenant


async def tenant_by_name(session: AsyncSession, name: str) -> Tenant | None:
    result = await session.execute(select(Tenant).where(col(Tenant.name) == name))
    return result.scalar_one_or_none()


async def key_by_prefix(session: AsyncSession, prefix: str) -> ApiKey | None:
    result = await session.execute(select(ApiKey).where(col(ApiKey.prefix) == prefix))
    return result.scalar_one_or_none()
