"""The models and the alembic revisions describe the same schema (on the suite's database:
SQLite in the embedded pass, PostgreSQL in CI's second pass)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from service.config import Settings
from service.db import create_engine
from service.migrations import current_revision, downgrade, head_revision, upgrade
from service.models import metadata
from service.sync.extract import record_hash
from tests.fixtures.services import CONFIGURED_DB, _create_pg_database, _drop_pg_database


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


BEFORE_XXH3 = "4f6b1d2e8c70"
"""The revision before `record_hash_xxh3`, whose records were hashed with BLAKE2b."""


@pytest.fixture
def fresh_database_url(tmp_path: Path) -> Iterator[str]:
    """An empty database of the suite's kind (a SQLite file, or a new PostgreSQL database
    on the suite's server), dropped afterwards."""
    if CONFIGURED_DB and not Settings(database_url=CONFIGURED_DB).is_sqlite:
        admin = make_url(Settings(database_url=CONFIGURED_DB).database_url)
        name = f"backsync_migration_{os.getpid()}"
        admin_url = admin.render_as_string(hide_password=False)
        asyncio.run(_create_pg_database(admin_url, name))
        yield admin.set(database=name).render_as_string(hide_password=False)
        asyncio.run(_drop_pg_database(admin_url, name))
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'migration.db'}"


async def _stored(database_url: str) -> dict[tuple[str, str], tuple[str, str]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT task_id, key, data, hash FROM record"))
            return {(t, k): (d, h) for t, k, d, h in rows}
    finally:
        await engine.dispose()


async def test_the_xxh3_revision_rehashes_every_stored_record_and_its_downgrade_restores_blake2b(
    fresh_database_url: str,
) -> None:
    """More rows than one batch of the revision (5,000), over three tasks, so the keyset
    walk crosses batches and tasks; keys with non-ASCII text and quotes."""
    url = fresh_database_url
    await upgrade(url, BEFORE_XXH3)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "task_id": f"tsk_{task}",
            "key": orjson.dumps(f'k\u00e9"{n:05d}').decode(),
            "data": orjson.dumps({"id": n, "name": f"r\u00e9cord {n}", "task": task}).decode(),
            "seq": n + 1,
            "deleted": n % 7 == 0,
        }
        for task in ("a", "b", "c")
        for n in range(4_001)
    ]
    for row in rows:
        row["hash"] = hashlib.blake2b(row["data"].encode(), digest_size=16).hexdigest()
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO record (task_id, key, data, hash, seq, created_at, updated_at,"
                    " deleted) VALUES (:task_id, :key, :data, :hash, :seq, :now, :now, :deleted)"
                ),
                [{**row, "now": now} for row in rows],
            )
    finally:
        await engine.dispose()

    await upgrade(url)
    upgraded = await _stored(url)
    assert len(upgraded) == len(rows)
    for row in rows:
        data, hashed = upgraded[(row["task_id"], row["key"])]
        assert data == row["data"]
        assert hashed == record_hash(data.encode()) != row["hash"]

    await downgrade(url, BEFORE_XXH3)
    downgraded = await _stored(url)
    assert {key: hashed for key, (_data, hashed) in downgraded.items()} == {
        (row["task_id"], row["key"]): row["hash"] for row in rows
    }
