from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.dependencies import Caller, JobQueue, Work
from service.errors import Conflict, InvalidInput, NotFound, Unauthenticated, problem_responses
from service.runs import service
from service.runs.schemas import RunOut, RunPage

router = APIRouter(tags=["runs"])
_COMMON = (Unauthenticated, NotFound)


@router.post(
    "/v1/tasks/{task_id}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    responses={
        200: {"model": RunOut, "description": "A run of this task was already queued or running: that run"},
        **problem_responses(*_COMMON),
    },
)
async def trigger_run(work: Work, caller: Caller, queue: JobQueue, response: Response, task_id: str) -> RunOut:
    """Trigger a run now"""
    run, created = await service.trigger(work.session, caller.tenant_id, task_id)
    if created:
        run_id = run.id
        work.after_commit(lambda: queue.enqueue_run(run_id))
    response.status_code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/runs/{run.id}"
    return service.to_out(run)


@router.get(
    "/v1/tasks/{task_id}/runs",
    response_model=RunPage,
    responses=problem_responses(*_COMMON, InvalidInput),
)
async def list_runs(
    work: Work,
    caller: Caller,
    task_id: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RunPage:
    """A task's run history, newest first"""
    return await service.list_runs(work.session, caller.tenant_id, task_id, limit, cursor)


@router.get("/v1/runs/{run_id}", response_model=RunOut, responses=problem_responses(*_COMMON))
async def get_run(work: Work, caller: Caller, run_id: str) -> RunOut:
    """A run's status, counters and error"""
    return service.to_out(await service.get_run(work.session, caller.tenant_id, run_id))


@router.post(
    "/v1/runs/{run_id}/cancel",
    response_model=RunOut,
    responses=problem_responses(*_COMMON, Conflict),
)
async def cancel_run(work: Work, caller: Caller, run_id: str) -> RunOut:
    """Cancel a run (a running fetch stops at the next page boundary)"""
    return service.to_out(await service.cancel(work.session, caller.tenant_id, run_id))
