"""The models and the alembic revisions describe the same schema (on the suite's database:
SQLite in the embedded pass, PostgreSQL in CI's second pass)."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service.db import create_engine
from service.migrations import current_revision, head_revision
from service.models import metadata


async def test_models_and_migrations_agree(database_url: str) -> None:
    engine = create_engine(database_url)

    def diff(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert set(metadata.tables) <= tables
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()
