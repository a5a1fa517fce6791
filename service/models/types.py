"""Column types shared by the tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for counters.
BigInt = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the Python side on every database (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware UTC everywhere; SQLite's DATETIME writes the fields and drops the offset,
        which is why every stored value must be UTC already."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def empty_list() -> list[Any]:
    """`default_factory=list`, but cheap: pydantic inspects a default factory's signature
    each time it calls it, and for a builtin like `list` that means parsing its text
    signature (about 0.2 ms per field per model built; bench/api.py found it in every
    trigger)."""
    return []


def empty_dict() -> dict[str, Any]:
    """`default_factory=dict`, for the reason `empty_list` gives."""
    return {}


def utcnow() -> datetime:
    return datetime.now(UTC)
