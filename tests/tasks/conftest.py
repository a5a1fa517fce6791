"""Direct reads of the `task` table, to check what is really stored."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text

from service.config import Settings
from service.db import create_engine

TaskRow = Callable[[str], Awaitable[dict[str, Any]]]


@pytest.fixture
def task_row(settings: Settings) -> TaskRow:
    async def read(task_id: str) -> dict[str, Any]:
        engine = create_engine(settings.database_url)
        try:
            async with engine.connect() as connection:
                result = await connection.execute(
                    text("SELECT * FROM task WHERE id = :id"), {"id": task_id}
                )
                row = result.mappings().one()
                return dict(row)
        finally:
            await engine.dispose()

    return read
