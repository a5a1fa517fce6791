"""PostgreSQL's ledger: a page's records, validators and its run's progress in one
statement.

A page that writes is the worker's most frequent transaction. As one statement, sent
outside any explicit transaction, it is one round trip instead of five or more (BEGIN,
records, validator, progress, the run's end on its last page, COMMIT), and still all or
nothing. On a 2-core machine each round trip costs the worker more CPU than the SQL
it carries (bench/concurrency.py: worker CPU per run; bench/ingest.py: first sync).

The lease fences the page inside the statement: the records, the validators and the
progress are only written through `held`, the run's row locked while it is still this
worker's, which finds nothing once the lease is not. The task row is locked before the
run row, the order a task's deletion takes them in.

Records go straight into the upsert, which writes only the ones whose hash changed (or
that come back after a deletion) and says which were new (`created_at = :now`): no
separate look-up of the stored hashes (the upsert's own index probe does that). Every
row sent reserves a `seq`, so a row sent unchanged leaves a gap. A run of a task that
has no records yet (`LeasedRun.fresh`: a first sync) sends its pages as plain inserts
in the same statement, with no conflict clause (`_statement(inserts=True)`); a key
that comes back on a later page makes that statement fail whole, and the page, and the
run's pages after it, are upserted. A run that detects deletions marks every row it
sends as seen by it (`seen_run`); its sweep commits with its end (`RunLedger.succeed`).
Pages of a resync are compared first, read-only (`_changed`), and only their changed
rows are sent.

A task with a `health_mapping` commits each page in a transaction instead: the samples
of the rows it sends, then the statement (`_write_mapped`, `samples`). Its pages are
compared first, so the rows sent are the changed ones (a sweep or a full refresh sends
every row; mapping an unchanged one writes nothing). Tasks without a mapping keep the
one-statement path.

The last page of a run (`PageWrite.ending`) also ends it and records the task's
outcome and watermark, unless a cancel was asked for meanwhile: then the page still
commits, and the ledger ends the run as cancelled.

Arrays travel as one string each (`packed`): asyncpg checks every element of a list
parameter in Python, which was a fifth of the worker's critical path (bench/ingest.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BindParameter,
    Executable,
    TextClause,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.db import autocommit, transaction
from service.models.types import UTCDateTime, utcnow
from service.notifications.outbox import Computed, NewEvent
from service.runs.ledger.base import RunLedger
from service.runs.ledger.outcomes import CHANGED_COUNTS, success_events
from service.runs.ledger.run import LeasedRun, PageWrite, Written
from service.runs.ledger.samples import count_samples, store_samples
from service.runs.ledger.statements import (
    CLAIMED_RUN,
    CLAIMED_TASK,
    ENDED_STATS,
    PREVIOUS_OWNER,
    RUN,
    TASK,
    TENANT_TABLE,
    claimed_run_update,
    unclaimed,
)
from service.runs.ledger.statements import (
    COUNTERS as _COUNTERS,
)
from service.sync import Row

UNIT_SEPARATOR = "\x1f"
UNIQUE_VIOLATION = "23505"
RECORD_KEY = "pk_record"
"""The record table's primary key (task_id, key): what a repeated key violates."""


def packed(values: list[str]) -> str:
    """A PostgreSQL text array as one parameter: the values joined by U+001F.

    Keys and data are canonical JSON, which escapes every control character, and hashes
    are hex, so U+001F never occurs inside a value; nor is any value empty (an empty
    string would vanish from the array).
    """
    if "" in values:
        raise ValueError("an empty value cannot be packed")
    return UNIT_SEPARATOR.join(values)


def _text_array(name: str) -> str:
    """SQL for the text array in parameter `name`, sent as one string (see `packed`)."""
    return f"string_to_array(CAST(:{name} AS text), chr(31))"


_ROWS = f"unnest({_text_array('keys')}, {_text_array('datas')}, {_text_array('hashes')})"
"""A page's (key, data, hash) rows from the packed parameters `keys`, `datas`, `hashes`."""

# Which of a page's (key, hash) pairs differ from what is stored (another hash, or a
# deleted record back), and whether each is new: an unchanged page answers with no rows.
# The stored hash is looked up per key (LATERAL): an index probe each, whatever the
# planner's statistics say. Right after a large first load the table is not analyzed
# yet, and a plain join was planned as a hash join over every record of the task. The
# LATERAL alone did not prevent that: PostgreSQL pulls a simple subquery up into a plain
# join (EXPLAIN in session 8: a hash of all 100,000 records, spilling to temp files, 86 ms
# a page). `LIMIT 1` (a no-op: (task_id, key) is the primary key) keeps the subquery a
# subquery, so each key is one probe of pk_record.
_CHANGED = text(
    "SELECT t.k, r.hash IS NULL OR r.deleted FROM unnest("  # noqa: S608 - constant SQL
    + _text_array("keys")
    + ", "
    + _text_array("hashes")
    + ") AS t(k, h) LEFT JOIN LATERAL (SELECT r.hash, r.deleted FROM record r"
    " WHERE r.task_id = CAST(:task_id AS varchar) AND r.key = t.k LIMIT 1) AS r ON true"
    " WHERE r.hash IS DISTINCT FROM t.h OR r.deleted"
)

_PROGRESS = (
    "), progress AS ("  # noqa: S608 - constant SQL
    " UPDATE run SET "
    + ", ".join(f"{name} = {name} + :{name}" for name in _COUNTERS)
    + ", inserted = inserted + :inserted + c.n_new,"
    " updated = updated + :updated + c.n_changed - c.n_new,"
    " unchanged = unchanged + :unchanged + :distinct - c.n_changed,"
    " checkpoint = :checkpoint"
)
"""The run's progress from a page's `counts` (n_new, n_changed) and what the caller
counted (`_COUNTED`); the caller ends the SET list and adds `FROM counts c`."""
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
_UNLESS_CANCELLED = "CASE WHEN (SELECT cancel_requested FROM held) THEN {column} ELSE {value} END"
_TASK_OUTCOME = (
    ", last_success_at = "
    + _UNLESS_CANCELLED.format(column="last_success_at", value=":now")
    + ", consecutive_failures = "
    + _UNLESS_CANCELLED.format(column="consecutive_failures", value="0")
    + ", auth_failed_at = "
    + _UNLESS_CANCELLED.format(column="auth_failed_at", value="NULL")
)
_TASK_WATERMARK = ", watermark = " + _UNLESS_CANCELLED.format(
    column="watermark", value="CAST(:watermark AS json)"
)
_COMPUTED = (
    "json_build_object('stats', json_build_object("  # noqa: S608 - constant SQL
    + ", ".join(f"'{name}', p.{name}" for name in ENDED_STATS)
    + "), "
    + ", ".join(f"'{name}', p.{name}" for name in CHANGED_COUNTS)
    + ", 'next_after', (SELECT base + :n_rows FROM seq), 'changed', "
    + " OR ".join(f"p.{name} <> 0" for name in CHANGED_COUNTS)
    + ")"
)
# A success's events (`outcomes.success_events`), written by the statement that ends
# the run, unless a cancel came first. Each event's data is the catalog's, sent as JSON
# in which a `Computed` value is {"$computed": name}; `computed` holds those values (the
# run's totals, from `progress`). The tenant's event seqs are reserved last, after the
# task's and the run's rows are locked (`service.notifications.outbox`).
_EVENTS = (
    ", computed AS ("  # noqa: S608 - constant SQL, every value is a bound parameter
    f" SELECT {_COMPUTED} AS v FROM progress p WHERE NOT p.cancel_requested"
    "), kept AS ("
    " SELECT e.id, e.type, e.task_id, e.user_id, e.data, c.v,"
    " row_number() OVER (ORDER BY e.n) AS n FROM unnest(CAST(:e_ids AS text[]),"
    " CAST(:e_types AS text[]), CAST(:e_task_ids AS text[]), CAST(:e_user_ids AS text[]),"
    " CAST(:e_datas AS text[]), CAST(:e_only_if AS text[]))"
    " WITH ORDINALITY AS e(id, type, task_id, user_id, data, only_if, n) CROSS JOIN computed c"
    " WHERE e.only_if IS NULL OR CAST(c.v ->> e.only_if AS boolean)"
    "), reserved AS ("
    " UPDATE tenant SET event_seq = event_seq + (SELECT count(*) FROM kept)"
    " WHERE id = CAST(:tenant_id AS varchar) AND EXISTS (SELECT 1 FROM kept)"
    " RETURNING event_seq - (SELECT count(*) FROM kept) AS base"
    "), appended AS ("
    " INSERT INTO event (tenant_id, seq, id, type, task_id, user_id, data, created_at)"
    " SELECT CAST(:tenant_id AS varchar), r.base + k.n, k.id, k.type, k.task_id, k.user_id,"
    " (SELECT json_object_agg(f.key, CASE WHEN json_typeof(f.value) = 'object'"
    " AND f.value ->> '$computed' IS NOT NULL THEN k.v -> (f.value ->> '$computed')"
    " ELSE f.value END ORDER BY f.n)"
    " FROM json_each(CAST(k.data AS json)) WITH ORDINALITY AS f(key, value, n)),"
    " CAST(:now AS timestamptz) FROM kept k CROSS JOIN reserved r RETURNING 1)"
)
_VALIDATORS = (
    ", validated AS ("
    " INSERT INTO page_validator (task_id, url_key, etag, last_modified, next_page, digest,"
    " records_seen, rejected, records_digest, updated_at)"
    " SELECT CAST(:task_id AS varchar), v.k, v.e, v.m, CAST(v.n AS json), v.d, v.s, v.r, v.rd,"
    " CAST(:now AS timestamptz) FROM unnest(CAST(:v_keys AS text[]),"
    " CAST(:v_etags AS text[]), CAST(:v_modified AS text[]), CAST(:v_next AS text[]),"
    " CAST(:v_digests AS text[]), CAST(:v_seen AS int[]), CAST(:v_rejected AS int[]),"
    " CAST(:v_records_digests AS text[])) AS v(k, e, m, n, d, s, r, rd) CROSS JOIN held"
    " ON CONFLICT (task_id, url_key) DO UPDATE SET etag = excluded.etag,"
    " last_modified = excluded.last_modified, next_page = excluded.next_page,"
    " digest = excluded.digest, records_seen = excluded.records_seen,"
    " rejected = excluded.rejected, records_digest = excluded.records_digest,"
    " updated_at = excluded.updated_at RETURNING 1)"
)
# What "changed" means is written once for both upserts: another hash, or a record
# that was deleted and is back (it is inserted again: a new `created_at`, so RETURNING
# tells new rows by `created_at = :now`).
_CHANGES = "(record.hash <> excluded.hash OR record.deleted)"
_REVIVED = (
    "created_at = CASE WHEN record.deleted THEN excluded.created_at ELSE record.created_at END"
)
_UPSERT_CHANGED = (
    "ON CONFLICT (task_id, key) DO UPDATE SET data = excluded.data, hash = excluded.hash,"
    f" seq = excluded.seq, updated_at = excluded.updated_at, {_REVIVED}, deleted = false"
    f" WHERE {_CHANGES}"
    " RETURNING created_at = CAST(:now AS timestamptz) AS is_new, true AS changed"
)
_INSERTED = ""
"""A first sync's rows (`_statement(inserts=True)`): each one written is new, so none
comes back (`counts` is the number sent)."""
_UPSERT_MARKING = (
    # A sweeping run (detect_deletions) marks every row it sees; only changed rows move.
    "ON CONFLICT (task_id, key) DO UPDATE SET data = excluded.data, hash = excluded.hash,"
    f" seq = CASE WHEN {_CHANGES} THEN excluded.seq ELSE record.seq END,"
    f" updated_at = CASE WHEN {_CHANGES} THEN excluded.updated_at ELSE record.updated_at END,"
    f" {_REVIVED}, deleted = false, seen_run = excluded.seen_run"
    " RETURNING created_at = CAST(:now AS timestamptz) AS is_new,"
    " updated_at = CAST(:now AS timestamptz) AS changed"
)


@functools.cache
def _statement(
    *, validators: bool, ends: bool, watermark: bool, marks: bool, inserts: bool = False
) -> TextClause:
    """A page's statement. `inserts`: the page's rows are all new (a first sync), so it
    inserts them with no conflict clause, and a key that is stored already fails it
    whole (`_write` then upserts the page).

    Why plain inserts for a first sync: PostgreSQL's `ON CONFLICT` insert is a
    speculative one (a probe, then the insert, then the check again), and without it
    the statement costs PostgreSQL about what `COPY` does for the same rows. As one
    statement, the page is one round trip, where the `COPY` this replaced took a
    transaction of six (BEGIN, the seqs, `COPY`'s two, the progress, COMMIT): a first
    sync of 100,000 records went from 70-75% of the database's own batched upsert to
    84-95% (108% at a million), and the worker's CPU from 0.62-0.66 to 0.51-0.55 s
    (bench/ingest.py, bench/RESULTS.md "Session 11")."""
    sql = (
        "WITH locked_task AS ("  # noqa: S608 - constant SQL, every value is a bound parameter
        " SELECT id FROM task WHERE id = CAST(:task_id AS varchar) FOR UPDATE"
        "), held AS ("
        " SELECT id, cancel_requested FROM run WHERE id = :run_id AND status = 'running'"
        " AND lease_owner = :owner AND EXISTS (SELECT 1 FROM locked_task) FOR UPDATE"
        "), seq AS ("
        " UPDATE task SET record_seq = record_seq + :n_rows"
        + (_TASK_OUTCOME if ends else "")
        + (_TASK_WATERMARK if watermark else "")
        + " WHERE id = CAST(:task_id AS varchar) AND EXISTS (SELECT 1 FROM held)"
        " RETURNING record_seq - :n_rows AS base"
        "), written AS ("
        " INSERT INTO record (task_id, key, data, hash, seq, created_at, updated_at, seen_run)"
        " SELECT CAST(:task_id AS varchar), t.k, t.d, t.h, s.base + t.n,"
        " CAST(:now AS timestamptz), CAST(:now AS timestamptz), "
        + ("CAST(:run_id AS varchar)" if marks else "NULL")
        + " FROM "
        + _ROWS
        + " WITH ORDINALITY AS t(k, d, h, n) CROSS JOIN seq s "
        + (_INSERTED if inserts else _UPSERT_MARKING if marks else _UPSERT_CHANGED)
        + "), counts AS ("
        + (
            # Every row of a statement that inserts is new, or it failed whole: the
            # rows need not come back to be counted.
            " SELECT CAST(:n_rows AS bigint) AS n_new, CAST(:n_rows AS bigint) AS n_changed"
            if inserts
            else " SELECT count(*) FILTER (WHERE is_new) AS n_new,"
            " count(*) FILTER (WHERE changed) AS n_changed FROM written"
        )
        + _PROGRESS
        + (_ENDS_RUN if ends else ", lease_expires_at = :lease_until")
        + " FROM counts c WHERE run.id = (SELECT id FROM held)"
        " RETURNING run.cancel_requested"
        + ("".join(f", run.{name}" for name in ENDED_STATS) if ends else "")
        + ")"
        + (_VALIDATORS if validators else "")
        + (_EVENTS if ends else "")
        + " SELECT (SELECT n_changed FROM counts), (SELECT cancel_requested FROM progress)"
        # An ending commit also says the run's totals (its metrics and log line), read
        # from what `computed` built for the events: no other statement.
        + (", (SELECT CAST(v -> 'stats' AS text) FROM computed)" if ends else "")
    )
    return text(sql).bindparams(*_binds(ends=ends, watermark=watermark))


def _binds(*, ends: bool, watermark: bool) -> list[BindParameter[Any]]:
    binds: list[BindParameter[Any]] = [
        bindparam("now", type_=UTCDateTime()),
        bindparam("lease_until", type_=UTCDateTime()),
        bindparam("checkpoint", type_=JSON()),
    ]
    if ends:
        binds.append(bindparam("attempts", type_=JSON()))
    if watermark:
        binds.append(bindparam("watermark", type_=JSON()))
    return binds


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _computed(value: Any) -> Any:
    if isinstance(value, Computed):
        return {"$computed": value.name}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _template(data: dict[str, Any]) -> str:
    """An event's data as JSON, each `Computed` value as {"$computed": name} (`_EVENTS`)."""
    return orjson.dumps(data, default=_computed, option=orjson.OPT_PASSTHROUGH_DATACLASS).decode()


def _event_params(run: LeasedRun, events: Sequence[NewEvent]) -> dict[str, Any]:
    return {
        "tenant_id": run.tenant_id,
        "e_ids": [event.id for event in events],
        "e_types": [event.type for event in events],
        "e_task_ids": [event.task_id for event in events],
        "e_user_ids": [event.user_id for event in events],
        "e_datas": [_template(event.data) for event in events],
        "e_only_if": [event.only_if for event in events],
    }


def _validator_params(validators: list[tuple[str, Any]]) -> dict[str, Any]:
    keys, values = zip(*validators, strict=True)
    return {
        "v_keys": list(keys),
        "v_etags": [v.etag for v in values],
        "v_modified": [v.last_modified for v in values],
        "v_next": [None if v.next_page is None else _json(v.next_page) for v in values],
        "v_digests": [v.digest for v in values],
        "v_seen": [v.records_seen for v in values],
        "v_rejected": [v.rejected for v in values],
        "v_records_digests": [v.records_digest for v in values],
    }


class PostgresLedger(RunLedger):
    """Every commit is one statement, fenced inside it (see the module doc)."""

    FRESH_PAGES_PER_STATEMENT = 2
    # Four were no better on the benchmark (session 13, bench/RESULTS.md): PostgreSQL's
    # CPU per first sync rose, and the wall time moved within the noise.

    async def _claim_row(self, session: AsyncSession, params: dict[str, Any]) -> Any | None:
        statement = _CLAIM_CAPPED if self.tenant_cap else _CLAIM
        return (await session.execute(statement, params)).one_or_none()

    async def _settle_claim(self, run_id: str, row: Any) -> Any | None:
        """Under a tenant cap, the claim's row ends with `alone`: when another claim of
        the tenant committed while it counted, count again (`_within_cap`)."""
        if not self.tenant_cap:
            return row
        *claimed, alone = row
        if alone or await self._within_cap(run_id, row.tenant_id):
            return claimed
        return None

    async def _within_cap(self, run_id: str, tenant_id: str) -> bool:
        """A claim that counted while another one of its tenant committed (see
        `_capped_claim_statement`): count again, under the tenant row's lock, and undo
        the claim if it went past the cap. Racing claims of one tenant take this lock in
        turn, so exactly the ones past the cap step back."""
        async with transaction(self.sessionmaker) as session:
            await session.execute(_LOCK_TENANT, {"tenant_id": tenant_id})
            running = (await session.execute(_RUNNING, {"tenant_id": tenant_id})).scalar_one()
            if running <= self.tenant_cap:
                return True
            params = {"run_id": run_id, "owner": self.owner, "now": utcnow()}
            await session.execute(_UNCLAIM, params)
        return False

    async def _changed(self, task_id: str, rows: list[Row]) -> dict[str, bool]:
        params = {
            "task_id": task_id,
            "keys": packed([row.key for row in rows]),
            "hashes": packed([row.hash for row in rows]),
        }
        async with autocommit(self.sessionmaker) as session:
            result = await session.execute(_CHANGED, params)
        return {key: bool(new) for key, new in result.all()}

    async def _write(self, run: LeasedRun, write: PageWrite) -> Written:
        params: dict[str, Any] = {
            "run_id": run.run_id,
            "task_id": run.task_id,
            "owner": self.owner,
            "n_rows": len(write.rows),
            "distinct": write.distinct,
            "checkpoint": write.checkpoint,
            "lease_until": write.lease_until,
            "now": write.now,
            **{name: write.progress.get(name, 0) for name in (*_COUNTERS, *_COUNTED)},
        }
        if write.validators:
            params.update(_validator_params(write.validators))
        ending = write.ending
        params["keys"] = packed([row.key for row in write.rows])
        params["datas"] = packed([row.data for row in write.rows])
        params["hashes"] = packed([row.hash for row in write.rows])
        if ending is not None:  # the success's events commit with it (`_EVENTS`)
            params["attempts"] = ending.attempts
            params["watermark"] = ending.watermark
            params.update(_event_params(run, success_events(run, ending.now)))
        shape = {
            "validators": bool(write.validators),
            "ends": ending is not None,
            "watermark": ending is not None and ending.watermark is not None,
            "marks": run.sweeps,
        }
        if run.health_mapping is not None:
            return await self._write_mapped(run, write, _statement(**shape), params)
        if run.fresh and write.rows:
            try:
                return await self._execute(run, _statement(**shape, inserts=True), params)
            except IntegrityError as exc:  # nothing was written
                if not _repeated_key(exc):
                    raise
                run.fresh = False  # a key came back: this run's pages are upserted from now on
        return await self._execute(run, _statement(**shape), params)

    async def _execute(
        self, run: LeasedRun, statement: Executable, params: dict[str, Any]
    ) -> Written:
        async with autocommit(self.sessionmaker) as session:
            changed, cancel, *totals = (await session.execute(statement, params)).one()
        _record_totals(run, totals)
        return Written(int(changed), None if cancel is None else bool(cancel))

    async def _write_mapped(
        self, run: LeasedRun, write: PageWrite, statement: Executable, params: dict[str, Any]
    ) -> Written:
        """A mapped task's page: its samples, then the page's statement, in one
        transaction (`samples`). The samples go first so that the user's `health_user`
        row is locked before the task, run and tenant rows the statement takes (the order
        a phone's batch takes `health_user` and the tenant's row in); the run's sample
        counts are added last, under the run row the statement holds. A lost lease
        rolls all of it back."""
        async with transaction(self.sessionmaker) as session:
            mapped = await store_samples(session, run, write.rows, write.now)
            changed, cancel, *totals = (await session.execute(statement, params)).one()
            if cancel is None:
                await session.rollback()
                return Written(0, None)
            await count_samples(session, run, mapped)
        _record_totals(run, totals)
        return Written(int(changed), bool(cancel))


def _repeated_key(exc: IntegrityError) -> bool:
    """A first sync's insert failed on a stored key (the record's primary key), not on
    another constraint of the statement (an event's, say), which upserting would not fix."""
    cause = getattr(exc.orig, "__cause__", None)
    return (
        getattr(exc.orig, "sqlstate", None) == UNIQUE_VIOLATION
        and getattr(cause, "constraint_name", None) == RECORD_KEY
    )


def _record_totals(run: LeasedRun, totals: list[Any]) -> None:
    """An ending statement's third column: the run's totals, when it succeeded with this
    page (for its metrics and log line)."""
    if totals and totals[0] is not None:
        run.totals = {name: int(count) for name, count in orjson.loads(totals[0]).items()}


def _claim_statement() -> Executable:
    """The claim, its task and the lease's previous owner in one statement (built once:
    constructing the CTE took longer than PostgreSQL ran it). Every part of a statement
    reads one snapshot, taken before its UPDATE: `previous` sees the row as it was."""
    previous = PREVIOUS_OWNER.cte("previous")
    run = claimed_run_update().cte("claimed")
    task = [TASK.c[name] for name in CLAIMED_TASK]
    return select(run, *task, select(previous).scalar_subquery()).join_from(
        run, TASK, TASK.c.id == run.c.task_id
    )


_CLAIM = _claim_statement()


def _capped_claim_statement() -> Executable:
    """`_claim_statement` under the tenant's cap, still one statement: the claim's
    `running_in_tenant() < :cap` counts in the statement's snapshot, which misses a claim
    of the same tenant that commits meanwhile (READ COMMITTED: a row lock taken in the
    statement does not refresh its snapshot). So every capped claim also bumps
    `tenant.run_claims`, which serialises them on the tenant row; the update sees the
    latest row, the plain read beside it the snapshot's. Equal but for our own bump
    (`alone`): no claim committed in between, and the count was true. Otherwise the
    ledger counts again under the row's lock (`PostgresLedger._within_cap`): a second
    statement only when claims of one tenant actually raced."""
    run = claimed_run_update(capped=True).returning(RUN.c.tenant_id.label("claimed_tenant"))
    claimed = run.cte("claimed")
    tenant_id = select(claimed.c.claimed_tenant).scalar_subquery()
    bumped = (
        update(TENANT_TABLE)
        .where(TENANT_TABLE.c.id == tenant_id)
        .values(run_claims=TENANT_TABLE.c.run_claims + 1)
        .returning(TENANT_TABLE.c.run_claims)
        .cte("bumped")
    )
    seen = select(TENANT_TABLE.c.run_claims).where(TENANT_TABLE.c.id == tenant_id)
    alone = seen.scalar_subquery() + 1 == select(bumped.c.run_claims).scalar_subquery()
    task = [TASK.c[name] for name in CLAIMED_TASK]
    columns = [claimed.c[name] for name in CLAIMED_RUN]
    previous = select(PREVIOUS_OWNER.cte("previous")).scalar_subquery()
    return select(*columns, *task, previous, alone.label("alone")).join_from(
        claimed, TASK, TASK.c.id == claimed.c.task_id
    )


_CLAIM_CAPPED = _capped_claim_statement()
_LOCK_TENANT = (
    select(TENANT_TABLE.c.id).where(TENANT_TABLE.c.id == bindparam("tenant_id")).with_for_update()
)
_RUNNING = select(func.count()).where(
    RUN.c.tenant_id == bindparam("tenant_id"), RUN.c.status == "running"
)
_UNCLAIM = unclaimed()
