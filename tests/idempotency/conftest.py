"""Direct access to the `idempotency_key` table, and a second "process" holding keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text, update

from service.config import Settings
from service.db import SessionMaker, create_engine, create_sessionmaker
from service.models import IdempotencyRecord


@pytest.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[SessionMaker]:
    engine = create_engine(settings.database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def sql(sessionmaker: SessionMaker, query: str, **params: Any) -> list[dict[str, Any]]:
    """The rows of a SELECT, read apart from the app's own sessions."""
    async with sessionmaker() as session:
        result = await session.execute(text(query), params)
        return [dict(row) for row in result.mappings()]


async def tenant_id(sessionmaker: SessionMaker, name: str = "acme") -> str:
    rows = await sql(sessionmaker, "SELECT id FROM tenant WHERE name = :name", name=name)
    return str(rows[0]["id"])


async def backdate(sessionmaker: SessionMaker, **times: datetime) -> None:
    """Set `expires_at` / `created_at` on every record (typed, so any database takes it)."""
    async with sessionmaker() as session:
        await session.execute(update(IdempotencyRecord).values(**times))
        await session.commit()
