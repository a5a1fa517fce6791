"""SQL every ledger shares: the claim's update, the lease fence, how a run ends, the
sweep of deletions. Core, not ORM: the worker runs these several times per run, and the
ORM's bookkeeping cost more CPU than the statements themselves (bench/concurrency.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import metadata
from service.models.types import utcnow
from service.runs.ledger.run import LeasedRun

RUN: Table = metadata.tables["run"]
TASK: Table = metadata.tables["task"]
TENANT_TABLE: Table = metadata.tables["tenant"]
VALIDATOR: Table = metadata.tables["page_validator"]
RECORD: Table = metadata.tables["record"]
LOCK_TASK = select(TASK.c.id).where(TASK.c.id == bindparam("task_id")).with_for_update()


CLAIMED_RUN = (
    "task_id",
    "attempt",
    "cancel_requested",
    "checkpoint",
    "options",
    "attempts",
    "trigger",
)
CLAIMED_TASK = (
    "tenant_id",
    "user_id",
    "consecutive_failures",
    "source",
    "auth_ciphertext",
    "limits",
    "retry",
    "watermark",
    "record_seq",
    "health_mapping",
)


PREVIOUS_OWNER = select(RUN.c.lease_owner).where(RUN.c.id == bindparam("run_id"))
"""The run's lease owner before a claim: another worker's when the claim takes over a
run whose lease expired (`LeasedRun.previous_owner`). A claim's RETURNING shows the
row as updated, so each ledger reads this beside its claim."""


TENANT_CAP_REASON = "tenant_concurrency_limit"
"""A run's `waiting_reason` while its tenant runs as many runs as it may."""


def due() -> Any:
    """Queued and due, or retrying and due: a run that may start now. A queued run is due
    at once unless it has a not-before time in `next_attempt_at` (a debounced push): its
    deferred job may reach a worker early (a skewed clock), and a reconciler re-send must
    not start it before its time either. A run waiting for its tenant's cap
    (`waiting_reason`) was due when it began to wait: its `next_attempt_at` is only when
    it is looked at again at the latest."""
    c = RUN.c
    now = bindparam("now", type_=c.started_at.type)
    waiting = c.waiting_reason.is_not(None)
    return or_(
        and_(
            c.status == "queued",
            or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now, waiting),
        ),
        and_(c.status == "retrying", or_(c.next_attempt_at <= now, waiting)),
    )


def running_in_tenant() -> Any:
    """How many runs of the claimed run's tenant are running (a correlated subquery)."""
    busy = RUN.alias("busy")
    return (
        select(func.count())
        .where(busy.c.tenant_id == RUN.c.tenant_id, busy.c.status == "running")
        .scalar_subquery()
    )


def claimed_run_update(capped: bool = False) -> Any:
    """Due (`due`), or running under an expired lease -> running, ours. `capped`: a due
    run only while its tenant runs fewer than `:cap` runs (a lease taken over already
    holds one of them); the caller makes that count trustworthy under concurrent claims
    (each database's ledger, `_claim_row`)."""
    c = RUN.c
    now = bindparam("now", type_=c.started_at.type)
    start = due()
    if capped:
        start = and_(start, running_in_tenant() < bindparam("cap"))
    claimable = or_(
        start,
        and_(c.status == "running", or_(c.lease_expires_at.is_(None), c.lease_expires_at < now)),
    )
    return (
        update(RUN)
        .where(c.id == bindparam("run_id"), claimable)
        .values(
            status="running",
            lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("lease_until", type_=c.lease_expires_at.type),
            next_attempt_at=None,
            waiting_reason=None,
            started_at=func.coalesce(c.started_at, now),
        )
        .returning(*(c[name] for name in CLAIMED_RUN))
    )


def waiting_for_cap() -> Any:
    """The claim found the run due but its tenant at the cap: it waits, saying why, and is
    looked at again by `:recheck_at` at the latest (`next_attempt_at`, which keeps the
    reconciler from re-sending it before then). Returns its tenant and creation time;
    nothing when the run is not due (finished, running, not yet due)."""
    c = RUN.c
    return (
        update(RUN)
        .where(c.id == bindparam("run_id"), due())
        .values(
            waiting_reason=TENANT_CAP_REASON,
            next_attempt_at=bindparam("recheck_at", type_=c.next_attempt_at.type),
        )
        .returning(c.tenant_id, c.created_at)
    )


def unclaimed() -> Any:
    """Undo a claim that went past the tenant's cap (PostgreSQL's race, see
    `runs.ledger.postgres`): the run is due again, as it was, and waits."""
    c = RUN.c
    first = c.attempt == 1
    return (
        update(RUN)
        .where(held(bindparam("run_id"), bindparam("owner")))
        .values(
            status=case((first, "queued"), else_="retrying"),
            started_at=case((and_(first, c.pages == 0), None), else_=c.started_at),
            next_attempt_at=bindparam("now", type_=c.next_attempt_at.type),
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(c.id)
    )


def held(run_id: Any, owner: Any) -> Any:
    """The run is running under `owner`'s lease: the fence of every write."""
    c = RUN.c
    return and_(c.id == run_id, c.status == "running", c.lease_owner == owner)


async def sweep(session: AsyncSession, run: LeasedRun, now: datetime) -> int:
    """Mark the task's records this run did not see as deleted, each with a new seq
    (so the change feed carries the deletion); returns how many."""
    c = RECORD.c
    unseen = and_(
        c.task_id == run.task_id,
        c.deleted.is_(False),
        or_(c.seen_run.is_(None), c.seen_run != run.run_id),
    )
    count = (await session.execute(select(func.count()).where(unseen))).scalar_one()
    if not count:
        return 0
    reserved = await session.execute(
        update(TASK)
        .where(TASK.c.id == run.task_id)
        .values(record_seq=TASK.c.record_seq + count)
        .returning(TASK.c.record_seq - count)
    )
    base = reserved.scalar_one()
    gone = select(c.key, func.row_number().over(order_by=c.seq).label("n")).where(unseen)
    gone_rows = gone.subquery()
    await session.execute(
        update(RECORD)
        .where(c.task_id == run.task_id, c.key == gone_rows.c.key)
        .values(deleted=True, seq=base + gone_rows.c.n, updated_at=now)
    )
    return int(count)


def end_run(
    run: LeasedRun,
    owner: str,
    status: str,
    error: dict[str, Any] | None,
    entry: dict[str, Any] | None,
) -> Any:
    """The statement that ends the run otherwise than by success (cancelled, failed),
    fenced by the lease; `entry` is this attempt, appended to `attempts`. It returns
    the run's `ENDED_STATS`, and no row when the lease was not this worker's."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "error": error,
        "next_attempt_at": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if entry is not None:
        values["attempts"] = [*run.attempts, entry]
    ended = update(RUN).where(held(run.run_id, owner)).values(**values)
    return ended.returning(*(RUN.c[name] for name in ENDED_STATS))


ENDED_STATS = (
    "pages",
    "requests",
    "not_modified",
    "records_seen",
    "inserted",
    "updated",
    "unchanged",
    "rejected",
    "deleted",
    "bytes",
)
"""A run's counters, as its end reports them (events, metrics, the run's log line)."""

COUNTERS = ("pages", "requests", "not_modified", "records_seen", "rejected", "bytes")
"""The run counters a page adds as counted by the engine (both ledgers); `inserted`,
`updated` and `unchanged` each ledger also counts from what its write did."""


VALIDATORS = select(
    # Core rows, not ORM objects: a conditional resync reads one per page, and building
    # the objects cost more than the query.
    VALIDATOR.c.url_key,
    VALIDATOR.c.etag,
    VALIDATOR.c.last_modified,
    VALIDATOR.c.next_page,
    VALIDATOR.c.digest,
    VALIDATOR.c.records_seen,
    VALIDATOR.c.rejected,
    VALIDATOR.c.records_digest,
).where(VALIDATOR.c.task_id == bindparam("task_id"))
