from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import AwareDatetime

from service.dependencies import Caller, JobQueue, Work
from service.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyMismatch,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    problem_responses,
)
from service.health import service
from service.health.schemas import (
    BatchAccepted,
    BatchIn,
    BatchOut,
    DailyOut,
    HealthChanges,
    SamplePage,
    SourcesIn,
    SourcesOut,
    TypeList,
)
from service.idempotency.dependencies import Idempotent
from service.pagination import MAX_SEQ

router = APIRouter(tags=["health"])

UserQuery = Annotated[
    str, Query(min_length=1, max_length=200, description="The app's end user", examples=["u_42"])
]
UserPath = Annotated[str, Path(min_length=1, max_length=200, examples=["u_42"])]
TypeQuery = Annotated[
    str, Query(max_length=60, description="A type of `GET /v1/health/types`", examples=["steps"])
]


@router.post(
    "/v1/health/samples",
    summary="Push a batch of health samples",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchAccepted,
    responses=problem_responses(
        Unauthenticated,
        IdempotencyKeyInUse,
        PayloadTooLarge,
        InvalidInput,
        IdempotencyKeyMismatch,
    ),
)
async def push_samples(
    work: Work, caller: Caller, queue: JobQueue, idempotency: Idempotent, body: BatchIn
) -> Response:
    """Send a batch of samples; the worker stores them

    Each sample is checked on its own: the answer lists the `rejected` ones with their
    index and reason, and the rest are stored by the worker shortly after (follow
    `Location`, or wait for the `health.batch.completed` event). At most
    10,000 samples (more: 422); a body over the server's size limit: 413.
    """
    if idempotency.replay is not None:
        return idempotency.replay
    accepted = await service.submit(work.session, caller.tenant_id, body)
    work.after_commit(lambda: queue.enqueue_health_batch(accepted.batch_id))
    location = f"/v1/health/batches/{accepted.batch_id}"
    return idempotency.respond(accepted, status.HTTP_202_ACCEPTED, location=location)


@router.get(
    "/v1/health/batches/{batch_id}",
    summary="A health batch: status and counts",
    response_model=BatchOut,
    responses=problem_responses(Unauthenticated, NotFound),
)
async def get_batch(work: Work, caller: Caller, batch_id: str) -> BatchOut:
    """A batch: pending or completed, with what its samples did"""
    return await service.get_batch(work.session, caller.tenant_id, batch_id)


@router.get(
    "/v1/health/samples",
    summary="A user's health samples",
    response_model=SamplePage,
    responses=problem_responses(Unauthenticated, InvalidInput),
)
async def list_samples(
    work: Work,
    caller: Caller,
    user_id: UserQuery,
    type: Annotated[str | None, Query(max_length=60, description="Only this type")] = None,
    start: Annotated[
        AwareDatetime | None, Query(description="Samples starting at or after")
    ] = None,
    end: Annotated[AwareDatetime | None, Query(description="Samples starting before")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> SamplePage:
    """A user's stored samples, by start time (values in canonical units)"""
    return await service.list_samples(
        work.session,
        caller.tenant_id,
        user_id,
        type_=type,
        start=start,
        end=end,
        limit=limit,
        cursor=cursor,
    )


@router.get(
    "/v1/health/daily",
    summary="Daily summaries by local day",
    response_model=DailyOut,
    response_model_exclude_none=True,
    responses=problem_responses(Unauthenticated, InvalidInput),
)
async def daily_summary(
    work: Work,
    caller: Caller,
    user_id: UserQuery,
    type: TypeQuery,
    start: Annotated[date, Query(description="First local day", examples=["2026-12-01"])],
    end: Annotated[date, Query(description="Last local day (inclusive)", examples=["2026-12-07"])],
) -> DailyOut:
    """One row per local day: sums, min/avg/max/count, or sleep seconds per stage

    Days are each sample's own local days; a cumulative sample spanning midnight is split
    in proportion; time covered by a higher-priority source is not counted twice (see
    `PUT /v1/health/users/{user_id}/sources` and the README).
    """
    return await service.daily(work.session, caller.tenant_id, user_id, type, start, end)


@router.get(
    "/v1/health/changes",
    summary="A user's health change feed",
    response_model=HealthChanges,
    responses=problem_responses(Unauthenticated, InvalidInput),
)
async def changes(
    work: Work,
    caller: Caller,
    user_id: UserQuery,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only changes after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> HealthChanges:
    """A user's inserted, updated and deleted samples since `after`, to mirror on a phone

    `seq` increases strictly in commit order: store `next_after` and ask `?after=` it
    next time, and nothing is skipped or repeated (HealthKit's anchor, Health Connect's
    changes token).
    """
    return await service.changes(work.session, caller.tenant_id, user_id, after, limit)


@router.put(
    "/v1/health/users/{user_id}/sources",
    summary="Set a user's source priority",
    response_model=SourcesOut,
    responses=problem_responses(Unauthenticated, InvalidInput),
)
async def set_sources(work: Work, caller: Caller, user_id: UserPath, body: SourcesIn) -> SourcesOut:
    """Set the user's source priority, highest first (used by daily summaries)"""
    return await service.set_sources(work.session, caller.tenant_id, user_id, body)


@router.get(
    "/v1/health/users/{user_id}/sources",
    summary="A user's source priority",
    response_model=SourcesOut,
    responses=problem_responses(Unauthenticated),
)
async def get_sources(work: Work, caller: Caller, user_id: UserPath) -> SourcesOut:
    """The user's source priority (empty: the default rule)"""
    return await service.get_sources(work.session, caller.tenant_id, user_id)


@router.get(
    "/v1/health/types", response_model=TypeList, responses=problem_responses(Unauthenticated)
)
async def list_types(caller: Caller) -> TypeList:
    """Every sample type: canonical unit, kind, accepted units, plausible range"""
    del caller  # authenticated like every /v1 call
    return service.types()
