"""Health metrics on the API side: accepting batches, reading samples, summaries, the
change feed and source priority (SPEC §6). The worker's side is `ingest`."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from service.errors import InvalidInput, NotFound
from service.health import repository
from service.health.daily import NO_SHIFT, SLEEP_SHIFT, Day, Span, summarize, zone_of
from service.health.normalize import normalize_all
from service.health.rollup import missing_ranges
from service.health.schemas import (
    BatchAccepted,
    BatchIn,
    BatchOut,
    DailyOut,
    DailyRow,
    HealthChanges,
    Rejection,
    SampleOut,
    SamplePage,
    SourcesIn,
    SourcesOut,
    TypeList,
    TypeOut,
)
from service.health.types import TYPES, Kind, SampleType
from service.ids import new_id
from service.models import HealthBatch, HealthSample
from service.models.types import utcnow

MAX_DAYS = 400
"""Longest range of one daily summary: a year, with room for a leap year and a margin."""
MAX_OFFSET = timedelta(hours=14)
"""The widest UTC offset in use (Kiribati, +14): how far a local day reaches from UTC's."""


async def submit(session: AsyncSession, tenant_id: str, body: BatchIn) -> BatchAccepted:
    """Validate every sample and keep the accepted ones in a pending batch for the
    worker (the caller enqueues it after the commit)."""
    accepted, rejected = normalize_all(body.samples, body.user_id, utcnow())
    batch = HealthBatch(
        id=new_id("hbt"),
        tenant_id=tenant_id,
        user_id=body.user_id,
        samples=[sample.to_json() for sample in accepted],
        rejections=[{"index": index, "reason": reason} for index, reason in rejected],
        accepted=len(accepted),
    )
    session.add(batch)
    await session.flush()
    return BatchAccepted(
        batch_id=batch.id,
        status="pending",
        accepted=batch.accepted,
        rejected=[Rejection(index=index, reason=reason) for index, reason in rejected],
    )


async def get_batch(session: AsyncSession, tenant_id: str, batch_id: str) -> BatchOut:
    batch = await repository.get_batch(session, tenant_id, batch_id)
    if batch is None:
        raise NotFound(f"health batch {batch_id} not found")
    return BatchOut.model_validate(
        {
            **batch.model_dump(exclude={"samples", "rejections"}),
            "rejected": batch.rejections,
            "status": batch.status,
        }
    )


async def list_samples(
    session: AsyncSession,
    tenant_id: str,
    user_id: str,
    *,
    type_: str | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    cursor: str | None,
) -> SamplePage:
    if type_ is not None:
        _known(type_)
    samples = await repository.page(
        session,
        tenant_id,
        user_id,
        type_=type_,
        start=start,
        end=end,
        after=_decode_cursor(cursor),
        limit=limit,
    )
    more = len(samples) > limit
    items = samples[:limit]
    return SamplePage(
        items=[to_out(sample) for sample in items],
        next_cursor=_encode_cursor(items[-1]) if more else None,
    )


async def changes(
    session: AsyncSession, tenant_id: str, user_id: str, after: int, limit: int
) -> HealthChanges:
    """The user's changes after `after`, in `seq` order: exact, because one user's
    changes commit in `seq` order (`service.models.HealthUser`)."""
    samples = await repository.changes(session, tenant_id, user_id, after, limit)
    return HealthChanges(
        items=[to_out(sample) for sample in samples],
        next_after=samples[-1].seq if samples else after,
    )


async def daily(
    session: AsyncSession, tenant_id: str, user_id: str, type_: str, first: date, last: date
) -> DailyOut:
    """The days from the rollup; the days it lacks computed from the samples under the
    user's lock and kept (`service.health.rollup`)."""
    kind = _known(type_)
    if last < first:
        raise InvalidInput.at(["query", "end"], "end is before start")
    if (last - first).days >= MAX_DAYS:
        raise InvalidInput.at(["query", "end"], f"at most {MAX_DAYS} days at a time")
    days = await repository.rollup(session, tenant_id, user_id, type_, first, last)
    if missing_ranges(first, last, days):
        days = await _fill(session, tenant_id, user_id, kind, first, last)
    return DailyOut(
        user_id=user_id,
        type=kind.name,
        unit=kind.unit,
        kind=kind.kind,
        days=[DailyRow.model_validate(days[day]) for day in sorted(days) if days[day]],
    )


async def _fill(
    session: AsyncSession, tenant_id: str, user_id: str, kind: SampleType, first: date, last: date
) -> dict[date, dict[str, Any] | None]:
    """The range's days, the missing ones computed and kept, all read under the lock."""
    priority = await repository.lock_existing_user(session, tenant_id, user_id)
    if priority is None:
        return {}  # a user never seen has no samples
    days = await repository.rollup(session, tenant_id, user_id, kind.name, first, last)
    for start, end in missing_ranges(first, last, days):
        computed = await _compute(session, tenant_id, user_id, kind, start, end, priority)
        await repository.keep_days(session, tenant_id, user_id, kind.name, computed)
        days |= computed
    return days


async def _compute(
    session: AsyncSession,
    tenant_id: str,
    user_id: str,
    kind: SampleType,
    first: date,
    last: date,
    priority: Sequence[str],
) -> dict[date, dict[str, Any] | None]:
    """Every day of [first, last] from the samples (None: no data that day)."""
    rows = await repository.overlapping(
        session, tenant_id, user_id, kind.name, *_window(kind, first, last)
    )
    spans = (
        Span(source, start, end, value, zone_of(offset, zone), stage)
        for source, start, end, value, offset, zone, stage in rows
    )
    found = {day.date: day for day in summarize(kind.kind, spans, first, last, priority)}
    out: dict[date, dict[str, Any] | None] = {}
    day = first
    while day <= last:
        summary = found.get(day)
        out[day] = None if summary is None else _json(summary)
        day += timedelta(days=1)
    return out


def _json(day: Day) -> dict[str, Any]:
    """A day as the rollup keeps it and the API answers it (JSON-ready, no nulls)."""
    row = DailyRow.model_validate(day, from_attributes=True)
    data: dict[str, Any] = row.model_dump(mode="json", exclude_none=True)
    return data


def _window(kind: SampleType, first: date, last: date) -> tuple[datetime, datetime]:
    """Sample starts that can fall on a local day in [first, last], whatever their zone:
    a day's UTC reach plus the longest sample of the type (and sleep's evening start)."""
    shift = SLEEP_SHIFT if kind.kind is Kind.CATEGORY else NO_SHIFT
    longest = kind.max_duration or timedelta(0)
    start = datetime.combine(first, time(), UTC)
    end = datetime.combine(last + timedelta(days=1), time(), UTC)
    return start - MAX_OFFSET - shift - longest, end + MAX_OFFSET


async def get_sources(session: AsyncSession, tenant_id: str, user_id: str) -> SourcesOut:
    user = await repository.get_user(session, tenant_id, user_id)
    return SourcesOut(user_id=user_id, sources=user.sources if user else [])


async def set_sources(
    session: AsyncSession, tenant_id: str, user_id: str, body: SourcesIn
) -> SourcesOut:
    if len(set(body.sources)) != len(body.sources):
        raise InvalidInput.at(["body", "sources"], "a source is listed twice")
    await repository.set_sources(session, tenant_id, user_id, body.sources)
    return SourcesOut(user_id=user_id, sources=body.sources)


def types() -> TypeList:
    return TypeList(
        items=[
            TypeOut(
                name=t.name,
                unit=t.unit,
                kind=t.kind,
                units=list(t.units),
                low=t.low,
                high=t.high,
                max_duration_seconds=t.max_duration.total_seconds() if t.max_duration else None,
                categories=sorted(t.categories) or None,
            )
            for t in TYPES.values()
        ]
    )


def _known(type_: str) -> SampleType:
    kind = TYPES.get(type_)
    if kind is None:
        raise InvalidInput.at(["query", "type"], f"unknown type {type_!r}")
    return kind


def to_out(sample: HealthSample) -> SampleOut:
    return SampleOut(
        **sample.model_dump(exclude={"tenant_id", "user_id", "start_at", "end_at", "metadata_"}),
        start=sample.start_at,
        end=sample.end_at,
        metadata=sample.metadata_,
    )


# ---- the samples list's cursor: the last (start, source, id) seen ----------------------


def _encode_cursor(sample: HealthSample) -> str:
    assert sample.start_at is not None  # live samples have a start
    raw = orjson.dumps([sample.start_at.isoformat(), sample.source, sample.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[datetime, str, str] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        start, source, id_ = _three_strings(orjson.loads(raw))
        return datetime.fromisoformat(start), source, id_
    except (binascii.Error, ValueError, TypeError):
        raise InvalidInput.at(["query", "cursor"], "invalid cursor") from None


def _three_strings(value: object) -> Sequence[str]:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
        raise ValueError("not a cursor")
    return value
