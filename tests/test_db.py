"""Transactions behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text

from service.db import create_engine, create_sessionmaker
from service.ids import new_id


async def test_a_savepoint_is_undone_when_its_transaction_rolls_back(clean_db: str) -> None:
    """On SQLite a SAVEPOINT as the first write used to commit on RELEASE."""
    engine = create_engine(clean_db)
    tenant = new_id("ten")
    try:
        async with create_sessionmaker(engine)() as session:
            await session.execute(text("SELECT 1"))
            async with session.begin_nested():
                await session.execute(
                    text(
                        "INSERT INTO tenant (id, name, created_at) VALUES (:id, :id, CURRENT_TIMESTAMP)"
                    ),
                    {"id": tenant},
                )
            await session.rollback()
        async with engine.connect() as connection:
            found = await connection.execute(
                text("SELECT count(*) FROM tenant WHERE id = :id"), {"id": tenant}
            )
            assert found.scalar_one() == 0
    finally:
        await engine.dispose()


async def test_a_savepoint_commits_with_its_transaction(clean_db: str) -> None:
    engine = create_engine(clean_db)
    tenant = new_id("ten")
    try:
        async with create_sessionmaker(engine)() as session:
            async with session.begin_nested():
                await session.execute(
                    text(
                        "INSERT INTO tenant (id, name, created_at) VALUES (:id, :id, CURRENT_TIMESTAMP)"
                    ),
                    {"id": tenant},
                )
            await session.commit()
        async with engine.connect() as connection:
            found = await connection.execute(
                text("SELECT count(*) FROM tenant WHERE id = :id"), {"id": tenant}
            )
            assert found.scalar_one() == 1
    finally:
        await engine.dispose()
