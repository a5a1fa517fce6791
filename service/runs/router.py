from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from service.dependencies import Caller, JobQueue, Quick, Reads, State, Work
from service.errors import (
    Conflict,
    IdempotencyKeyInUse,
    IdempotencyKeyMismatch,
    InvalidInput,
    NotFound,
    Unauthenticated,
    problem_responses,
)
from service.idempotency.dependencies import Idempotent
from service.runs import service
from service.runs.events import TooManyStreams, run_events
from service.runs.schemas import RunOut, RunPage, TriggerIn

router = APIRouter(tags=["runs"])
_COMMON = (Unauthenticated, NotFound)


@router.post(
    "/v1/tasks/{task_id}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    responses={
        200: {
            "model": RunOut,
            "description": "A run of this task was already queued or running: that run",
        },
        **problem_responses(*_COMMON, IdempotencyKeyInUse, InvalidInput, IdempotencyKeyMismatch),
    },
)
async def trigger_run(
    work: Work,
    caller: Caller,
    queue: JobQueue,
    quick: Quick,
    idempotency: Idempotent,
    task_id: str,
    body: Annotated[TriggerIn | None, Body()] = None,
) -> Response:
    """Trigger a run now"""
    if idempotency.replay is not None:
        return idempotency.replay
    run, created = await service.trigger(quick, caller.tenant_id, task_id, body)
    if created:
        run_id = run.id
        work.after_commit(lambda: queue.enqueue_run(run_id))
    return idempotency.respond(
        run,
        status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        location=f"/v1/runs/{run.id}",
    )


@router.get(
    "/v1/tasks/{task_id}/runs",
    response_model=RunPage,
    responses=problem_responses(*_COMMON, InvalidInput),
)
async def list_runs(
    reads: Reads,
    caller: Caller,
    task_id: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RunPage:
    """A task's run history, newest first"""
    async with AsyncSession(reads, expire_on_commit=False) as session:
        return await service.list_runs(session, caller.tenant_id, task_id, limit, cursor)


@router.get("/v1/runs/{run_id}", response_model=RunOut, responses=problem_responses(*_COMMON))
async def get_run(quick: Quick, caller: Caller, run_id: str) -> Response:
    """A run's status, counters and error"""
    # Rendered here, as FastAPI would render `RunOut`, without its validating the model
    # again on the way out (bench/api.py).
    run = await service.read_run(quick, caller.tenant_id, run_id)
    return Response(run.model_dump_json(by_alias=True), media_type="application/json")


@router.post(
    "/v1/runs/{run_id}/cancel",
    response_model=RunOut,
    responses=problem_responses(*_COMMON, Conflict),
)
async def cancel_run(work: Work, caller: Caller, run_id: str) -> RunOut:
    """Cancel a run (a running fetch stops at the next page boundary)"""
    return service.to_out(await service.cancel(work.session, caller.tenant_id, run_id))


_SSE_EVENT = {
    "type": "object",
    "description": "One Server-Sent Event (OpenAPI 3.1 reads an event stream's `schema` as"
    " each event's: its `event`, `id` and `data` fields).",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "status"]},
        "id": {"type": "string", "description": "The run's committed page count."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "The run as `GET /v1/runs/{run_id}` shows it, as JSON.",
        },
    },
}

_SSE_EXAMPLE = (
    'event: progress\nid: 1\ndata: {"id": "run_…", "status": "running", …}\n\n'
    'event: status\nid: 3\ndata: {"id": "run_…", "status": "succeeded", …}\n\n'
)


@router.get(
    "/v1/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": (
                "`progress` events (the run, as in GET /v1/runs/{id}) per page, then one"
                " `status` event; or, when the run waits (queued or retrying, nothing"
                " changing) longer than the server's limit (10 minutes by default), one"
                " `timeout` event. Every event's data is the run."
            ),
            "content": {"text/event-stream": {"schema": _SSE_EVENT, "example": _SSE_EXAMPLE}},
        },
        **problem_responses(*_COMMON, TooManyStreams),
    },
)
async def run_events_stream(
    quick: Quick, caller: Caller, state: State, run_id: str
) -> StreamingResponse:
    """Follow a run live (Server-Sent Events); the stream ends with the run"""
    run = await service.read_run(quick, caller.tenant_id, run_id)
    hub = state["progress"]
    slot = hub.open_slot(caller.key_prefix)
    max_wait = state["settings"].events_max_wait_seconds
    return StreamingResponse(
        slot.bind(run_events(hub, slot, run, max_wait_seconds=max_wait)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
