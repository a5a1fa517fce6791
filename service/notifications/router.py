from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.dependencies import Caller, Work
from service.errors import InvalidInput, Unauthenticated, problem_responses
from service.notifications import service
from service.notifications.schemas import EventFeed
from service.pagination import MAX_SEQ

router = APIRouter(tags=["events"])


@router.get(
    "/v1/events",
    summary="The events feed",
    response_model=EventFeed,
    responses=problem_responses(Unauthenticated, InvalidInput),
)
async def list_events(
    work: Work,
    caller: Caller,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only events after this `seq`")] = 0,
    type: Annotated[
        list[str] | None,
        Query(
            description="Only these types (repeat the parameter, or separate with commas)",
            examples=["run.failed,task.paused"],
        ),
    ] = None,
    task_id: Annotated[str | None, Query(max_length=40)] = None,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventFeed:
    """Events after `after`, oldest first: what the worker and the API did that a client
    may want to act on (runs ended, records changed, a task paused, credentials refused).

    Each event is written in the same transaction as the change it reports, and the
    cursor is exact: store `next_after` and ask `?after=` it next time, and nothing is
    skipped or repeated. Events are kept for `BACKSYNC_EVENT_RETENTION_DAYS` (30).
    """
    types = [name for value in type or [] for name in value.split(",") if name]
    return await service.feed(
        work.session,
        caller.tenant_id,
        after=after,
        types=types,
        task_id=task_id,
        user_id=user_id,
        limit=limit,
    )
