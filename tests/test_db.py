"""Transactions behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from service.db import create_engine, create_sessionmaker
from service.ids import new_id


@pytest.mark.parametrize(("ends_with", "rows_left"), [("rollback", 0), ("commit", 1)])
async def test_a_savepoint_shares_the_fate_of_its_transaction(
    clean_db: str, ends_with: str, rows_left: int
) -> None:
    """On SQLite a SAVEPOINT as the first write used to commit on RELEASE, whatever the
    transaction around it did afterwards."""
    engine = create_engine(clean_db)
    tenant = new_id("ten")
    try:
        async with create_sessionmaker(engine)() as session:
            await session.execute(text("SELECT 1"))
            async with session.begin_nested():
                await session.execute(
                    text(
                        "INSERT INTO tenant (id, name, created_at) "
                        "VALUES (:id, :id, CURRENT_TIMESTAMP)"
                    ),
                    {"id": tenant},
                )
            await getattr(session, ends_with)()
        async with engine.connect() as connection:
            found = await connection.execute(
                text("SELECT count(*) FROM tenant WHERE id = :id"), {"id": tenant}
            )
            assert found.scalar_one() == rows_left
    finally:
        await engine.dispose()
