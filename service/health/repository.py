"""The health tables' SQL.

The writes the worker makes per chunk are written out as text where PostgreSQL and
SQLite spell them the same (`INSERT … ON CONFLICT … DO UPDATE … RETURNING`), which
SQLAlchemy would otherwise build per database. A chunk's samples themselves are read
and written by `service.health.writer`, where the two databases differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, bindparam, delete, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlmodel import col

from service.models import HealthBatch, HealthDaily, HealthSample, HealthUser

# ---- users: the seq counter and the source priority ----------------------------------

_LOCK_USER = text(
    "INSERT INTO health_user (tenant_id, user_id, sample_seq, sources)"
    " VALUES (:tenant_id, :user_id, 0, :sources)"
    " ON CONFLICT (tenant_id, user_id) DO UPDATE SET sample_seq = health_user.sample_seq"
    " RETURNING sample_seq"
).bindparams(bindparam("sources", type_=JSON()))


async def lock_user(session: AsyncSession, tenant_id: str, user_id: str) -> int:
    """The user's last seq, the row created if need be and locked to the commit."""
    params = {"tenant_id": tenant_id, "user_id": user_id, "sources": []}
    return int((await session.execute(_LOCK_USER, params)).scalar_one())


async def set_seq(session: AsyncSession, tenant_id: str, user_id: str, seq: int) -> None:
    await session.execute(
        update(HealthUser)
        .where(col(HealthUser.tenant_id) == tenant_id, col(HealthUser.user_id) == user_id)
        .values(sample_seq=seq)
    )


async def get_user(session: AsyncSession, tenant_id: str, user_id: str) -> HealthUser | None:
    return await session.get(HealthUser, (tenant_id, user_id))


async def set_sources(
    session: AsyncSession, tenant_id: str, user_id: str, sources: list[str]
) -> None:
    await lock_user(session, tenant_id, user_id)
    await forget_user_days(session, tenant_id, user_id)  # priority decides every day
    await session.execute(
        update(HealthUser)
        .where(col(HealthUser.tenant_id) == tenant_id, col(HealthUser.user_id) == user_id)
        .values(sources=sources)
    )


async def lock_existing_user(
    session: AsyncSession, tenant_id: str, user_id: str
) -> list[str] | None:
    """Lock the user's row, as a chunk's ingest does, and return its source priority;
    None for a user never seen (no row, no samples, nothing to lock)."""
    u = HealthUser
    result = await session.execute(
        update(u)
        .where(col(u.tenant_id) == tenant_id, col(u.user_id) == user_id)
        .values(sample_seq=col(u.sample_seq))
        .returning(col(u.sources))
    )
    sources = result.scalar_one_or_none()
    return None if sources is None else list(sources)


# ---- the daily rollup -------------------------------------------------------------------


async def rollup(
    session: AsyncSession, tenant_id: str, user_id: str, type_: str, first: date, last: date
) -> dict[date, dict[str, Any] | None]:
    d = HealthDaily
    result = await session.execute(
        select(col(d.day), col(d.data)).where(
            col(d.tenant_id) == tenant_id,
            col(d.user_id) == user_id,
            col(d.type) == type_,
            col(d.day) >= first,
            col(d.day) <= last,
        )
    )
    return {day: data for day, data in result.all()}


_KEEP_DAY = text(
    "INSERT INTO health_daily (tenant_id, user_id, type, day, data)"
    " VALUES (:tenant_id, :user_id, :type, :day, :data)"
    " ON CONFLICT (tenant_id, user_id, type, day) DO UPDATE SET data = excluded.data"
).bindparams(bindparam("day", type_=Date()), bindparam("data", type_=JSON(none_as_null=True)))


async def keep_days(
    session: AsyncSession,
    tenant_id: str,
    user_id: str,
    type_: str,
    days: dict[date, dict[str, Any] | None],
) -> None:
    """Store computed days (call under the user's lock: `service.health.rollup`)."""
    if days:
        params = {"tenant_id": tenant_id, "user_id": user_id, "type": type_}
        await session.execute(
            _KEEP_DAY, [params | {"day": day, "data": data} for day, data in days.items()]
        )


async def forget_days(
    session: AsyncSession, tenant_id: str, user_id: str, spans: dict[str, tuple[date, date]]
) -> None:
    """Drop the rollup's rows of these days (per type, first and last), or, without
    `spans`, all of the user's."""
    d = HealthDaily
    mine = (col(d.tenant_id) == tenant_id, col(d.user_id) == user_id)
    for type_, (first, last) in spans.items():
        await session.execute(
            delete(d).where(*mine, col(d.type) == type_, col(d.day) >= first, col(d.day) <= last)
        )


async def forget_user_days(session: AsyncSession, tenant_id: str, user_id: str) -> None:
    d = HealthDaily
    await session.execute(delete(d).where(col(d.tenant_id) == tenant_id, col(d.user_id) == user_id))


# ---- samples --------------------------------------------------------------------------


async def page(
    session: AsyncSession,
    tenant_id: str,
    user_id: str,
    *,
    type_: str | None,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, str, str] | None,
    limit: int,
) -> Sequence[HealthSample]:
    """Live samples by (start, source, id), after the keyset `after`; one extra row."""
    s = HealthSample
    query = select(s).where(
        col(s.tenant_id) == tenant_id, col(s.user_id) == user_id, col(s.deleted).is_(False)
    )
    if type_ is not None:
        query = query.where(col(s.type) == type_)
    if start is not None:
        query = query.where(col(s.start_at) >= start)
    if end is not None:
        query = query.where(col(s.start_at) < end)
    if after is not None:
        query = query.where(tuple_(col(s.start_at), col(s.source), col(s.id)) > tuple_(*after))
    order = (col(s.start_at), col(s.source), col(s.id))
    result = await session.execute(query.order_by(*order).limit(limit + 1))
    return result.scalars().all()


async def overlapping(
    session: AsyncSession,
    tenant_id: str,
    user_id: str,
    type_: str,
    start: datetime,
    end: datetime,
) -> Sequence[Any]:
    """Live samples of a type starting in [start, end): the daily summary's rows, as
    plain rows (a year of minutes is half a million of them)."""
    s = HealthSample
    result = await session.execute(
        select(
            col(s.source),
            col(s.start_at),
            col(s.end_at),
            col(s.value),
            col(s.tz_offset_minutes),
            col(s.timezone),
            col(s.stage),
        ).where(
            col(s.tenant_id) == tenant_id,
            col(s.user_id) == user_id,
            col(s.type) == type_,
            col(s.start_at) >= start,
            col(s.start_at) < end,
            col(s.deleted).is_(False),
        )
    )
    return result.all()


async def changes(
    session: AsyncSession, tenant_id: str, user_id: str, after: int, limit: int
) -> Sequence[HealthSample]:
    s = HealthSample
    result = await session.execute(
        select(s)
        .where(col(s.tenant_id) == tenant_id, col(s.user_id) == user_id, col(s.seq) > after)
        .order_by(col(s.seq))
        .limit(limit)
    )
    return result.scalars().all()


# ---- batches --------------------------------------------------------------------------


async def get_batch(session: AsyncSession, tenant_id: str, batch_id: str) -> HealthBatch | None:
    """The batch without its pending samples (a client polling a 10,000-sample batch
    would otherwise have the API decode them on every poll: bench/health.py)."""
    result = await session.execute(
        select(HealthBatch)
        .options(defer(HealthBatch.samples))  # type: ignore[arg-type]
        .where(col(HealthBatch.id) == batch_id, col(HealthBatch.tenant_id) == tenant_id)
    )
    return result.scalar_one_or_none()


async def pending_batch(session: AsyncSession, batch_id: str) -> HealthBatch | None:
    result = await session.execute(
        select(HealthBatch).where(
            col(HealthBatch.id) == batch_id, col(HealthBatch.status) == "pending"
        )
    )
    return result.scalar_one_or_none()


async def lock_pending(session: AsyncSession, batch_id: str) -> int | None:
    """How many samples are ingested, the pending batch's row locked to the commit (a
    second worker on the same batch waits here, then continues after this chunk); None
    once the batch is no longer pending."""
    b = HealthBatch
    result = await session.execute(
        update(b)
        .where(col(b.id) == batch_id, col(b.status) == "pending")
        .values(ingested=col(b.ingested))
        .returning(col(b.ingested))
    )
    return result.scalar_one_or_none()


_TOTALS = ("accepted", "inserted", "updated", "deleted", "unchanged", "ignored")


async def advance(
    session: AsyncSession,
    batch_id: str,
    done: int,
    counts: dict[str, int],
    finished: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    """Add a chunk's counts; on the last chunk, complete the batch and drop its samples.
    Progress counts as a send (`sent_at`): a batch that moves is not re-sent. Returns
    the batch's totals."""
    b = HealthBatch
    values: dict[str, Any] = {name: getattr(b, name) + counts.get(name, 0) for name in _TOTALS[1:]}
    values |= {"ingested": col(b.ingested) + done, "sent_at": now}
    if finished is not None:
        values |= {"status": "completed", "completed_at": finished, "samples": None}
    result = await session.execute(
        update(b)
        .where(col(b.id) == batch_id)
        .values(**values)
        .returning(*(getattr(b, name) for name in (*_TOTALS, "rejections")))
    )
    row = result.one()
    return dict(zip((*_TOTALS, "rejections"), row, strict=True))


async def fail(session: AsyncSession, batch_id: str, error: str, now: datetime) -> None:
    b = HealthBatch
    await session.execute(
        update(b)
        .where(col(b.id) == batch_id, col(b.status) == "pending")
        .values(status="failed", error=error[:500], completed_at=now, samples=None)
    )


async def stale_pending(
    session: AsyncSession, sent_before: datetime, limit: int = 500
) -> Sequence[str]:
    b = HealthBatch
    result = await session.execute(
        select(col(b.id))
        .where(col(b.status) == "pending", col(b.sent_at) < sent_before)
        .order_by(col(b.sent_at))
        .limit(limit)
    )
    return result.scalars().all()


async def mark_resent(
    session: AsyncSession, batch_id: str, sent_before: datetime, now: datetime
) -> int | None:
    """Count a re-send (its number names the job), unless another worker's reconciler
    just did; None then."""
    b = HealthBatch
    result = await session.execute(
        update(b)
        .where(col(b.id) == batch_id, col(b.status) == "pending", col(b.sent_at) < sent_before)
        .values(sends=col(b.sends) + 1, sent_at=now)
        .returning(col(b.sends))
    )
    return result.scalar_one_or_none()
