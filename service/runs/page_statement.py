"""PostgreSQL: a page's records, validators and its run's progress in one statement.

A page that writes is the worker's most frequent transaction. As one statement, sent
outside any explicit transaction, it is one round trip instead of five or more (BEGIN,
records, validator, progress, the run's end on its last page, COMMIT), and still all or
nothing. On a 2-core machine each round trip costs the worker more CPU than the SQL
it carries (bench/concurrency.py).

The lease fences the page inside the statement: the records, the validators and the
progress are only written through `held`, the run's row locked while it is still this
worker's, which finds nothing once the lease is not. The task row is locked before the
run row, the order a task's deletion takes them in.

Records go straight into the upsert, which writes only the ones whose hash changed and
says which were new (`xmax = 0`): no separate look-up of the stored hashes (the
upsert's own index probe does that). Every record of the page reserves a `seq`, so an
unchanged record leaves a gap; seqs stay strictly increasing in commit order, which is
all the change feed promises. Pages expected to change come here; a resync compares
first, read-only (`service.records.service.compare_page`).

The last page of a run (`PageWrite.succeed`) also ends it, unless a cancel was asked
for meanwhile: then the page still commits, and the caller ends the run as cancelled.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import JSON, BindParameter, TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from service.models.types import UTCDateTime
from service.records.repository import ON_CONFLICT_CHANGED, PG_PAGE_ROWS, packed
from service.sync.conditional import Validator
from service.sync.records import Row

_COUNTERS = ("pages", "requests", "not_modified", "records_seen", "rejected", "bytes")
_COUNTED = ("inserted", "updated", "unchanged")
"""Added to what the statement itself counts (earlier copies of a key in the page, and
the quiet pages before it)."""

_ENDS_RUN = (
    ", status = CASE WHEN run.cancel_requested THEN run.status ELSE 'succeeded' END"
    ", finished_at = CASE WHEN run.cancel_requested THEN run.finished_at ELSE :now END"
    ", attempts = CASE WHEN run.cancel_requested THEN run.attempts ELSE :attempts END"
    ", error = NULL, next_attempt_at = NULL"
    ", lease_owner = CASE WHEN run.cancel_requested THEN run.lease_owner END"
    ", lease_expires_at = CASE WHEN run.cancel_requested THEN :lease_until END"
)
_RECORDS_OUTCOME = (
    ", last_success_at = CASE WHEN (SELECT cancel_requested FROM held) THEN last_success_at"
    " ELSE :now END, consecutive_failures = CASE WHEN (SELECT cancel_requested FROM held)"
    " THEN consecutive_failures ELSE 0 END"
)
_VALIDATORS = (
    ", validated AS ("
    " INSERT INTO page_validator (task_id, url_key, etag, last_modified, next_page, digest,"
    " records_seen, rejected, updated_at)"
    " SELECT CAST(:task_id AS varchar), v.k, v.e, v.m, CAST(v.n AS json), v.d, v.s, v.r,"
    " CAST(:now AS timestamptz) FROM unnest(CAST(:v_keys AS text[]),"
    " CAST(:v_etags AS text[]), CAST(:v_modified AS text[]), CAST(:v_next AS text[]),"
    " CAST(:v_digests AS text[]), CAST(:v_seen AS int[]), CAST(:v_rejected AS int[]))"
    " AS v(k, e, m, n, d, s, r) CROSS JOIN held"
    " ON CONFLICT (task_id, url_key) DO UPDATE SET etag = excluded.etag,"
    " last_modified = excluded.last_modified, next_page = excluded.next_page,"
    " digest = excluded.digest, records_seen = excluded.records_seen,"
    " rejected = excluded.rejected, updated_at = excluded.updated_at RETURNING 1)"
)


@functools.cache
def _statement(*, validators: bool, succeed: bool) -> TextClause:
    sql = (
        "WITH locked_task AS ("  # noqa: S608 - constant SQL, every value is a bound parameter
        " SELECT id FROM task WHERE id = CAST(:task_id AS varchar) FOR UPDATE"
        "), held AS ("
        " SELECT id, cancel_requested FROM run WHERE id = :run_id AND status = 'running'"
        " AND lease_owner = :owner AND EXISTS (SELECT 1 FROM locked_task) FOR UPDATE"
        "), seq AS ("
        " UPDATE task SET record_seq = record_seq + :distinct"
        + (_RECORDS_OUTCOME if succeed else "")
        + " WHERE id = CAST(:task_id AS varchar) AND EXISTS (SELECT 1 FROM held)"
        " RETURNING record_seq - :distinct AS base"
        "), written AS ("
        " INSERT INTO record (task_id, key, data, hash, seq, created_at, updated_at)"
        " SELECT CAST(:task_id AS varchar), t.k, t.d, t.h, s.base + t.n,"
        " CAST(:now AS timestamptz), CAST(:now AS timestamptz)"
        " FROM "
        + PG_PAGE_ROWS
        + " WITH ORDINALITY AS t(k, d, h, n) CROSS JOIN seq s "
        + ON_CONFLICT_CHANGED
        + " RETURNING xmax = 0 AS is_new"
        "), counts AS ("
        " SELECT count(*) FILTER (WHERE is_new) AS n_new, count(*) AS n_changed FROM written"
        "), progress AS ("
        " UPDATE run SET "
        + ", ".join(f"{name} = {name} + :{name}" for name in _COUNTERS)
        + ", inserted = inserted + :inserted + c.n_new,"
        " updated = updated + :updated + c.n_changed - c.n_new,"
        " unchanged = unchanged + :unchanged + :distinct - c.n_changed,"
        " checkpoint = :checkpoint"
        + (_ENDS_RUN if succeed else ", lease_expires_at = :lease_until")
        + " FROM counts c WHERE run.id = (SELECT id FROM held)"
        " RETURNING run.cancel_requested)"
        + (_VALIDATORS if validators else "")
        + " SELECT (SELECT n_new FROM counts), (SELECT n_changed FROM counts),"
        " (SELECT cancel_requested FROM progress)"
    )
    binds: list[BindParameter[Any]] = [
        bindparam("now", type_=UTCDateTime()),
        bindparam("lease_until", type_=UTCDateTime()),
        bindparam("checkpoint", type_=JSON()),
    ]
    if succeed:
        binds.append(bindparam("attempts", type_=JSON()))
    return text(sql).bindparams(*binds)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True, slots=True)
class PageWritten:
    inserted: int
    changed: int
    cancel_requested: bool | None
    """None: the lease was not this worker's any more, and nothing was written."""


@dataclass(frozen=True, slots=True)
class PageWrite:
    run_id: str
    task_id: str
    owner: str
    rows: list[Row]
    """Distinct keys (the last copy of each)."""
    progress: dict[str, int]
    """Counters to add besides this page's own inserted/updated/unchanged."""
    checkpoint: dict[str, Any]
    lease_until: datetime
    now: datetime
    validators: list[tuple[str, Validator]] = field(default_factory=list)
    """(page key, validator) pairs to remember."""
    succeed: list[dict[str, Any]] | None = None
    """The run's attempts, this one included: the run succeeds with this page."""


async def write(session: AsyncSession, page: PageWrite) -> PageWritten:
    params: dict[str, Any] = {
        "run_id": page.run_id,
        "task_id": page.task_id,
        "owner": page.owner,
        "keys": packed([row.key for row in page.rows]),
        "datas": packed([row.data for row in page.rows]),
        "hashes": packed([row.hash for row in page.rows]),
        "distinct": len(page.rows),
        "checkpoint": page.checkpoint,
        "lease_until": page.lease_until,
        "now": page.now,
        **{name: page.progress.get(name, 0) for name in (*_COUNTERS, *_COUNTED)},
    }
    if page.validators:
        keys, validators = zip(*page.validators, strict=True)
        params.update(
            v_keys=list(keys),
            v_etags=[v.etag for v in validators],
            v_modified=[v.last_modified for v in validators],
            v_next=[None if v.next_page is None else _json(v.next_page) for v in validators],
            v_digests=[v.digest for v in validators],
            v_seen=[v.records_seen for v in validators],
            v_rejected=[v.rejected for v in validators],
        )
    if page.succeed is not None:
        params["attempts"] = page.succeed
    statement = _statement(validators=bool(page.validators), succeed=page.succeed is not None)
    inserted, changed, cancel = (await session.execute(statement, params)).one()
    return PageWritten(int(inserted), int(changed), None if cancel is None else bool(cancel))
