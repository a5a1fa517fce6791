from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.dependencies import Caller, Work
from service.errors import InvalidInput, NotFound, Unauthenticated, problem_responses
from service.records import service
from service.records.schemas import RecordFeed

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
    after: Annotated[int, Query(ge=0, description="Only records changed after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RecordFeed:
    """The task's change feed: records inserted or changed after `after`"""
    return await service.change_feed(work.session, caller.tenant_id, task_id, after, limit)
