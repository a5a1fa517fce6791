from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.dependencies import Caller, Work
from service.errors import InvalidInput, NotFound, Unauthenticated, problem_responses
from service.pagination import MAX_SEQ
from service.records import service
from service.records.schemas import ChangeFeed, RecordFeed

router = APIRouter(tags=["records"])


@router.get(
    "/v1/tasks/{task_id}/records",
    response_model=RecordFeed,
    responses=problem_responses(Unauthenticated, NotFound, InvalidInput),
)
async def task_records(
    work: Work,
    caller: Caller,
    task_id: str,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="Only records changed after this seq")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RecordFeed:
    """The task's change feed: records inserted, changed or deleted after `after`"""
    return await service.change_feed(work.session, caller.tenant_id, task_id, after, limit)


@router.get(
    "/v1/records/changes",
    summary="A user's change feed, across all their tasks",
    response_model=ChangeFeed,
    responses=problem_responses(Unauthenticated, InvalidInput),
)
async def user_changes(
    work: Work,
    caller: Caller,
    user_id: Annotated[
        str, Query(min_length=1, max_length=200, description="The tasks' `user_id`")
    ],
    after: Annotated[
        str | None,
        Query(
            max_length=8192,
            description="The `next_after` of the previous answer; absent or empty: from the start",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ChangeFeed:
    """Records inserted, changed or deleted in any of the user's tasks since the cursor `after`,
    each naming its task.

    Items come in (seq, task_id) order: each task's in the order its records changed.
    Store `next_after` and ask `?after=` it next time: one cursor for all the user's
    tasks, exact (nothing skipped or repeated, whatever is being written meanwhile),
    opaque, and returned unchanged when nothing is new. Tasks registered later start
    from their first record; deleted tasks drop out.
    """
    return await service.user_changes(work.session, caller.tenant_id, user_id, after, limit)
