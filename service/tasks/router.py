from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Response, status

from service.dependencies import AppSettings, Caller, JobQueue, Secrets, State, Work
from service.errors import (
    Conflict,
    IdempotencyKeyInUse,
    IdempotencyKeyMismatch,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    problem_responses,
)
from service.idempotency.dependencies import Idempotent
from service.tasks import service
from service.tasks.dry_run import DryRun, dry_run
from service.tasks.schemas import TASK_EXAMPLE, TaskIn, TaskOut, TaskPage, TaskPatch

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
_COMMON = (Unauthenticated, InvalidInput)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
    responses={
        200: {
            "model": TaskOut,
            "description": "The name existed; `on_conflict` kept, replaced or updated it",
        },
        **problem_responses(
            *_COMMON, Conflict, IdempotencyKeyInUse, IdempotencyKeyMismatch, PayloadTooLarge
        ),
    },
)
async def create_task(
    work: Work,
    caller: Caller,
    queue: JobQueue,
    secrets: Secrets,
    settings: AppSettings,
    idempotency: Idempotent,
    body: Annotated[
        TaskIn, Body(openapi_examples={"cursor-paginated API": {"value": TASK_EXAMPLE}})
    ],
    on_conflict: Annotated[
        Literal["fail", "keep", "replace", "update"],
        Query(
            description="What to do when a task with this name exists: "
            "409, return it, replace it, or merge into it"
        ),
    ] = "fail",
) -> Response:
    """Register a sync task"""
    if idempotency.replay is not None:
        return idempotency.replay
    task, created = await service.create_task(
        work.session, secrets, settings, caller.tenant_id, body, on_conflict
    )
    if task.next_run_at is not None:
        work.after_commit(queue.schedules_changed)  # wake the schedulers: a new slot
    return idempotency.respond(
        await service.describe(work.session, task),
        status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        location=f"/v1/tasks/{task.id}",
    )


@router.get("", response_model=TaskPage, responses=problem_responses(*_COMMON))
async def list_tasks(
    work: Work,
    caller: Caller,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
    tag: Annotated[str | None, Query(max_length=100)] = None,
    state: Literal["active", "paused"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TaskPage:
    """List tasks, newest first"""
    return await service.list_tasks(
        work.session,
        caller.tenant_id,
        user_id=user_id,
        tag=tag,
        state=state,
        limit=limit,
        cursor=cursor,
    )


@router.get("/{task_id}", response_model=TaskOut, responses=problem_responses(*_COMMON, NotFound))
async def get_task(work: Work, caller: Caller, task_id: str) -> TaskOut:
    """Inspect a task"""
    task = await service.get_task(work.session, caller.tenant_id, task_id)
    return await service.describe(work.session, task)


@router.patch(
    "/{task_id}",
    response_model=TaskOut,
    responses=problem_responses(*_COMMON, NotFound, Conflict, PayloadTooLarge),
)
async def update_task(
    work: Work,
    caller: Caller,
    queue: JobQueue,
    secrets: Secrets,
    settings: AppSettings,
    task_id: str,
    patch: TaskPatch,
) -> TaskOut:
    """Change a task (JSON merge patch), e.g. pause it"""
    task = await service.update_task(
        work.session, secrets, settings, caller.tenant_id, task_id, patch
    )
    if {"schedule", "paused"} & patch.model_fields_set:
        work.after_commit(queue.schedules_changed)  # the next slot may be sooner
    return await service.describe(work.session, task)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(*_COMMON, NotFound),
)
async def delete_task(work: Work, caller: Caller, task_id: str) -> None:
    """Delete a task with its runs and records"""
    await service.delete_task(work.session, caller.tenant_id, task_id)


@router.post(
    ":validate",
    response_model=DryRun,
    responses=problem_responses(*_COMMON, PayloadTooLarge),
)
async def validate_task(caller: Caller, state: State, body: TaskIn) -> DryRun:
    """Dry run: fetch the first page of a proposed task and show what a run would store"""
    del caller  # authentication only: a dry run stores nothing
    service.check_limits(body, state["settings"])
    return await dry_run(state["http"], body, state["bodies"], state["settings"].max_response_bytes)
