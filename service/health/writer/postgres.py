"""PostgreSQL's sample writer: a chunk's look-up and its upsert as one statement each,
the rows travelling as one JSON document.

Why: the generic look-up (`(source, id) IN (...)` with a thousand pairs) was planned as
a walk over the user's samples filtered against the list, so each chunk cost more than
the last (5,500 samples/s into an empty table, 440/s by its 40,000th sample). Here each
key is one probe of the primary key: `LATERAL … LIMIT 1`, which PostgreSQL does not pull
up into a join, and the tenant and user compared to columns of the keys' rows, not to
constants. With constants, the planner estimates a user it has no statistics for (a new
user's first upload: every one) at one row, finds the smaller change-feed index
(tenant, user, seq) as cheap as the primary key, and probes through it, reading all of
the user's samples for every key; compared to a column, it estimates by the number of
distinct users, and only the primary key finds one row. The upsert is one
`INSERT … SELECT FROM json_to_recordset` per chunk instead of a statement executed per
row, with no per-value conversion in Python: a normalised sample's times are already
ISO strings, which PostgreSQL parses. One JSON parameter, not a text array per column:
sample ids and sources are the client's strings (no separator is safe in them), and
asyncpg checks every element of an array parameter in Python.

New samples are not upserted but `COPY`ed: a chunk of 5,000 new samples took 63-73 ms
through the JSON upsert and about half that as binary COPY rows. A chunk is first
`COPY`ed whole in a savepoint (`insert_new`), which the primary key refuses if one of
its keys is stored; only then is it looked up, its new samples `COPY`ed and the stored
ones (an edit, a deletion, a tombstone revived) upserted. Measured by
`python -m bench.health` (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
from sqlalchemy import text

from service.health.merge import Key, Stored
from service.health.normalize import moment
from service.health.writer.base import Chunk, Write
from service.models.types import UTCDateTime

_STORED = text(
    "SELECT k.source, k.id, s.hash, s.modified_at, s.deleted, s.type, s.start_at, s.end_at"
    " FROM json_to_recordset(CAST(:keys AS json)) AS k(t text, u text, source text, id text)"
    " JOIN LATERAL (SELECT s.hash, s.modified_at, s.deleted, s.type, s.start_at, s.end_at"
    " FROM health_sample s WHERE s.tenant_id = k.t AND s.user_id = k.u"
    " AND s.source = k.source AND s.id = k.id LIMIT 1) AS s ON true"
).columns(modified_at=UTCDateTime(), start_at=UTCDateTime(), end_at=UTCDateTime())

# (name in the JSON rows, PostgreSQL type): the sample's own columns, in
# `Normalized`'s field order where they come from it.
_FIELDS = (
    ("source", "text"),
    ("id", "text"),
    ("type", "text"),
    ("value", "double precision"),
    ("unit", "text"),
    ("start_at", "timestamptz"),
    ("end_at", "timestamptz"),
    ("tz_offset_minutes", "integer"),
    ("timezone", "text"),
    ("device", "text"),
    ("recording_method", "text"),
    ("metadata", "json"),
    ("stage", "text"),
    ("modified_at", "timestamptz"),
    ("deleted", "boolean"),
    ("hash", "text"),
    ("seq", "bigint"),
)
_NAMES = [name for name, _ in _FIELDS]
_UPDATED = [name for name in _NAMES if name not in ("source", "id")] + ["updated_at"]
_UPSERT = text(
    "INSERT INTO health_sample (tenant_id, user_id, "  # noqa: S608 - constant SQL
    + ", ".join(_NAMES)
    + ", created_at, updated_at) SELECT CAST(:tenant_id AS varchar), CAST(:user_id AS varchar), "
    + ", ".join(f"r.{name}" for name in _NAMES)
    + ", CAST(:now AS timestamptz), CAST(:now AS timestamptz)"
    " FROM json_to_recordset(CAST(:rows AS json)) AS r("
    + ", ".join(f"{name} {kind}" for name, kind in _FIELDS)
    + ") ON CONFLICT (tenant_id, user_id, source, id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _UPDATED)
)


COPIED = (
    "tenant_id",
    "user_id",
    *_NAMES[:11],
    "metadata",
    *_NAMES[12:],
    "created_at",
    "updated_at",
)


class PostgresWriter:
    async def insert_new(self, chunk: Chunk, writes: Sequence[Write]) -> bool:
        try:
            async with chunk.session.begin_nested():
                await _copy(chunk, writes)
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def stored(self, chunk: Chunk, keys: Sequence[Key]) -> dict[Key, Stored]:
        if not keys:
            return {}
        document = orjson.dumps(
            [{"t": chunk.tenant_id, "u": chunk.user_id, "source": s, "id": i} for s, i in set(keys)]
        ).decode()
        result = await chunk.session.execute(_STORED, {"keys": document})
        return {
            (row[0], row[1]): Stored(row[2], row[3], row[4], row[5], row[6], row[7])
            for row in result.all()
        }

    async def upsert(self, chunk: Chunk, writes: Sequence[Write]) -> None:
        await _copy(chunk, [write for write in writes if write.new])
        stored = [write for write in writes if not write.new]
        if stored:
            params = {
                "rows": orjson.dumps([_row(write) for write in stored]).decode(),
                "tenant_id": chunk.tenant_id,
                "user_id": chunk.user_id,
                "now": chunk.now,
            }
            await chunk.session.execute(_UPSERT, params)


def _row(write: Write) -> dict[str, Any]:
    s = write.sample
    return {
        "source": s.source,
        "id": s.id,
        "type": s.type,
        "value": s.value,
        "unit": s.unit,
        "start_at": s.start,
        "end_at": s.end,
        "tz_offset_minutes": s.tz_offset_minutes,
        "timezone": s.timezone,
        "device": s.device,
        "recording_method": s.recording_method,
        "metadata": s.metadata,
        "stage": s.stage,
        "modified_at": s.modified_at,
        "deleted": s.deleted,
        "hash": s.hash,
        "seq": write.seq,
    }


async def _copy(chunk: Chunk, writes: Sequence[Write]) -> None:
    """`COPY` the writes in as new rows, on the session's connection (its transaction)."""
    if not writes:
        return
    raw = await (await chunk.session.connection()).get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None, "a connection checked out has its driver's"
    records = [copy_row(chunk.tenant_id, chunk.user_id, write, chunk.now) for write in writes]
    await driver.copy_records_to_table("health_sample", records=records, columns=COPIED)


def copy_row(tenant_id: str, user_id: str, write: Write, now: datetime) -> tuple[Any, ...]:
    """A new sample as a row of `COPIED`, in the types asyncpg's binary COPY takes
    (bench/health.py `COPY`s the same rows as its ceiling)."""
    s = write.sample
    metadata = None if s.metadata is None else orjson.dumps(s.metadata).decode()
    return (
        tenant_id,
        user_id,
        s.source,
        s.id,
        s.type,
        s.value,
        s.unit,
        moment(s.start),
        moment(s.end),
        s.tz_offset_minutes,
        s.timezone,
        s.device,
        s.recording_method,
        metadata,
        s.stage,
        moment(s.modified_at),
        s.deleted,
        s.hash,
        write.seq,
        now,
        now,
    )
