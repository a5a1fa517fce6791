from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel


class HealthDaily(SQLModel, table=True):
    """The daily summary's rollup: one user's computed day of one type, kept so that a
    year's summary reads 366 rows instead of half a million samples.

    A cache that is never stale: every write of a sample deletes the rows of the days
    its old and new versions can touch, in the transaction that writes it and under the
    user's lock (`service.health.rollup`); a change of the user's source priority
    deletes them all. A day missing here is computed from the samples, under the same
    lock, and stored (`data` null: a day without data). See `service.health.rollup`.
    """

    __tablename__ = "health_daily"

    tenant_id: str = Field(primary_key=True, max_length=40)
    user_id: str = Field(primary_key=True, max_length=200)
    type: str = Field(primary_key=True, max_length=60)
    day: dt.date = Field(primary_key=True)
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    """The day's row as `GET /v1/health/daily` answers it; null: no data that day."""
