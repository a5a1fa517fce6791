"""SQLite's sample writer: the look-up probes the primary key once per key (`json_each`
over the chunk's keys), and the upsert is one statement executed per row (`executemany`
in one call: SQLite runs in this process, so a row costs no round trip)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import JSON, BindParameter, bindparam, text
from sqlalchemy.exc import IntegrityError

from service.health.merge import Key, Stored
from service.health.normalize import moment
from service.health.writer.base import Chunk, Write
from service.models import HealthSample
from service.models.types import UTCDateTime

_STORED = text(
    "SELECT s.source, s.id, s.hash, s.modified_at, s.deleted, s.type, s.start_at, s.end_at"
    " FROM json_each(:keys) AS k CROSS JOIN health_sample s"
    " WHERE s.tenant_id = :tenant_id AND s.user_id = :user_id"
    " AND s.source = json_extract(k.value, '$[0]') AND s.id = json_extract(k.value, '$[1]')"
).columns(modified_at=UTCDateTime(), start_at=UTCDateTime(), end_at=UTCDateTime())

_COLUMNS = [column.name for column in HealthSample.__table__.columns]  # type: ignore[attr-defined]
_KEY = ("tenant_id", "user_id", "source", "id")
_INSERT_SQL = (
    f"INSERT INTO health_sample ({', '.join(_COLUMNS)})"  # noqa: S608 - constant SQL
    f" VALUES ({', '.join(':' + name for name in _COLUMNS)})"
)
_BINDS: tuple[BindParameter[Any], ...] = (
    *(bindparam(name, type_=UTCDateTime()) for name in _COLUMNS if name.endswith("_at")),
    bindparam("metadata", type_=JSON()),
)
_INSERT = text(_INSERT_SQL).bindparams(*_BINDS)
"""New samples (`insert_new`): a stored key fails the statement."""
_UPSERT = text(
    _INSERT_SQL
    + f" ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
    + ", ".join(
        f"{name} = excluded.{name}" for name in _COLUMNS if name not in (*_KEY, "created_at")
    )
).bindparams(*_BINDS)


class SqliteWriter:
    async def insert_new(self, chunk: Chunk, writes: Sequence[Write]) -> bool:
        if not writes:
            return True
        try:
            async with chunk.session.begin_nested():
                await chunk.session.execute(_INSERT, _rows(chunk, writes))
        except IntegrityError:
            return False
        return True

    async def stored(self, chunk: Chunk, keys: Sequence[Key]) -> dict[Key, Stored]:
        if not keys:
            return {}
        params = {
            "keys": orjson.dumps(list(set(keys))).decode(),
            "tenant_id": chunk.tenant_id,
            "user_id": chunk.user_id,
        }
        result = await chunk.session.execute(_STORED, params)
        return {
            (row[0], row[1]): Stored(row[2], row[3], bool(row[4]), row[5], row[6], row[7])
            for row in result.all()
        }

    async def upsert(self, chunk: Chunk, writes: Sequence[Write]) -> None:
        if writes:
            await chunk.session.execute(_UPSERT, _rows(chunk, writes))


def _rows(chunk: Chunk, writes: Sequence[Write]) -> list[dict[str, Any]]:
    return [_row(chunk.tenant_id, chunk.user_id, write, chunk.now) for write in writes]


def _row(tenant_id: str, user_id: str, write: Write, now: datetime) -> dict[str, Any]:
    s = write.sample
    return {
        "tenant_id": tenant_id,
        "user_id": user_id,
        "source": s.source,
        "id": s.id,
        "type": s.type,
        "value": s.value,
        "unit": s.unit,
        "start_at": moment(s.start),
        "end_at": moment(s.end),
        "tz_offset_minutes": s.tz_offset_minutes,
        "timezone": s.timezone,
        "device": s.device,
        "recording_method": s.recording_method,
        "metadata": s.metadata,
        "stage": s.stage,
        "modified_at": moment(s.modified_at),
        "deleted": s.deleted,
        "hash": s.hash,
        "seq": write.seq,
        "created_at": now,
        "updated_at": now,
    }
