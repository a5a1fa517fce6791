"""Run alembic from inside Backsync (CLI `migrate`, `dev`, `/readyz`, tests).

The migration scripts ship inside the wheel (`service/_migrations`); a source checkout
uses the top-level `alembic/` directory.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command
from service.db import create_engine

_PACKAGED = Path(__file__).parent / "_migrations"
_CHECKOUT = Path(__file__).parent.parent


def alembic_config(database_url: str) -> Config:
    root = _PACKAGED if (_PACKAGED / "alembic.ini").exists() else _CHECKOUT
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    config.attributes["database_url"] = database_url
    return config


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


async def upgrade(database_url: str, revision: str = "head") -> None:
    await _run(database_url, command.upgrade, revision)


async def downgrade(database_url: str, revision: str) -> None:
    """Back to `revision` (tests of a revision's data step go down and up again)."""
    await _run(database_url, command.downgrade, revision)


async def _run(database_url: str, step: Any, revision: str) -> None:
    config = alembic_config(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_step_sync, config, step, revision)
    finally:
        await engine.dispose()


def _step_sync(connection: Any, config: Config, step: Any, revision: str) -> None:
    config.attributes["connection"] = connection
    step(config, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    def _read(connection: Any) -> str | None:
        rev: str | None = MigrationContext.configure(connection).get_current_revision()
        return rev

    async with engine.connect() as connection:
        return await connection.run_sync(_read)
