"""Push URLs over HTTP: managed under a task with an API key; called at `/v1/push/{token}`
by providers, with none."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse

from service.broker.rate_limit import RateLimiter
from service.dependencies import AppSettings, Caller, JobQueue, State, Work
from service.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    problem_responses,
)
from service.push import service
from service.push.handshake import Answer, Handshake
from service.push.schemas import (
    HandshakeOut,
    PushReceipt,
    PushUrlCreated,
    PushUrlIn,
    PushUrlList,
    PushUrlOut,
    PushUrlPatch,
)

router = APIRouter(tags=["push"])
_MANAGE = (Unauthenticated, NotFound)
_CALL = (NotFound, RateLimited)
_PUSH_URLS = "/v1/tasks/{task_id}/push-urls"
_PUSH = "/v1/push/{token}"


async def push_limiter(state: State) -> RateLimiter:
    """The process's one limiter (built at startup: building one registers its Lua
    script again, per request)."""
    return state["push_limiter"]


Limiter = Annotated[RateLimiter, Depends(push_limiter)]


@router.post(
    _PUSH_URLS,
    status_code=status.HTTP_201_CREATED,
    response_model=PushUrlCreated,
    responses=problem_responses(*_MANAGE, InvalidInput),
)
async def create_push_url(
    work: Work,
    caller: Caller,
    request: Request,
    task_id: str,
    body: Annotated[PushUrlIn | None, Body()] = None,
) -> JSONResponse:
    """Make a secret push URL that triggers the task (shown once)"""
    push_url, token = await service.create(
        work.session, caller.tenant_id, task_id, body or PushUrlIn()
    )
    url = str(request.url_for("push_notify", token=token))
    created = service.created_out(push_url, url, token)
    return JSONResponse(
        created.model_dump(mode="json"),
        status_code=status.HTTP_201_CREATED,
        headers={"Location": f"/v1/tasks/{push_url.task_id}/push-urls/{push_url.id}"},
    )


@router.get(_PUSH_URLS, response_model=PushUrlList, responses=problem_responses(*_MANAGE))
async def list_push_urls(work: Work, caller: Caller, task_id: str) -> PushUrlList:
    """A task's push URLs (never their tokens)"""
    return PushUrlList(items=await service.list_for_task(work.session, caller.tenant_id, task_id))


@router.get(
    _PUSH_URLS + "/{push_url_id}", response_model=PushUrlOut, responses=problem_responses(*_MANAGE)
)
async def get_push_url(work: Work, caller: Caller, task_id: str, push_url_id: str) -> PushUrlOut:
    """A push URL: calls received, last call"""
    push_url = await service.get(work.session, caller.tenant_id, task_id, push_url_id)
    return service.to_out(push_url)


@router.patch(
    _PUSH_URLS + "/{push_url_id}",
    response_model=PushUrlOut,
    responses=problem_responses(*_MANAGE, InvalidInput),
)
async def update_push_url(
    work: Work, caller: Caller, task_id: str, push_url_id: str, patch: PushUrlPatch
) -> PushUrlOut:
    """Set or clear a push URL's verification code, or change its answer status"""
    push_url = await service.update(work.session, caller.tenant_id, task_id, push_url_id, patch)
    return service.to_out(push_url)


@router.delete(
    _PUSH_URLS + "/{push_url_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(*_MANAGE),
)
async def revoke_push_url(work: Work, caller: Caller, task_id: str, push_url_id: str) -> None:
    """Revoke a push URL: it answers 404 from now on"""
    await service.revoke(work.session, caller.tenant_id, task_id, push_url_id)


_NOTIFY_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": PushReceipt, "description": "The same, for a URL made with response_status 200"},
    204: {"description": "The same, without a body, for response_status 204 (Fitbit)"},
    **problem_responses(*_CALL, PayloadTooLarge),
}


@router.post(
    _PUSH,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PushReceipt,
    responses=_NOTIFY_RESPONSES,
)
@router.put(
    _PUSH,
    operation_id="push_notify_put",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PushReceipt,
    responses=_NOTIFY_RESPONSES,
)
async def push_notify(
    work: Work,
    queue: JobQueue,
    settings: AppSettings,
    limiter: Limiter,
    request: Request,
    token: str,
) -> Response:
    """A provider's "new data" notification: trigger the task (no API key; body ignored)"""
    await _drain(request, settings.push_max_body_bytes)
    notified = await service.notify(work.session, limiter, token)
    if notified.run is not None:
        run_id, at = notified.run.id, notified.run.next_attempt_at
        work.after_commit(lambda: queue.enqueue_run(run_id, not_before=at))
    if notified.status == status.HTTP_204_NO_CONTENT:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return JSONResponse(notified.receipt.model_dump(mode="json"), status_code=notified.status)


async def _drain(request: Request, cap: int) -> None:
    """Read the body (its content is not used) and refuse one over `cap` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"a push body is at most {cap} bytes")
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > cap:
            raise PayloadTooLarge(f"a push body is at most {cap} bytes")


@router.get(
    _PUSH,
    response_model=HandshakeOut,
    response_model_exclude_none=True,
    responses={
        204: {"description": "Fitbit's `verify` code matched"},
        **problem_responses(*_CALL),
    },
)
async def push_handshake(
    work: Work,
    limiter: Limiter,
    token: str,
    challenge: Annotated[str | None, Query(max_length=500)] = None,
    verification_token: Annotated[str | None, Query(max_length=500)] = None,
    hub_challenge: Annotated[str | None, Query(alias="hub.challenge", max_length=500)] = None,
    hub_mode: Annotated[str | None, Query(alias="hub.mode", max_length=50)] = None,
    hub_verify_token: Annotated[str | None, Query(alias="hub.verify_token", max_length=500)] = None,
    verify: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """A provider's subscription check: echo `challenge` / `hub.challenge`, or Fitbit's `verify`"""
    del hub_mode  # Strava sends `subscribe`; the echo does not depend on it
    check = Handshake(challenge, verification_token, hub_challenge, hub_verify_token, verify)
    match await service.check(work.session, limiter, token, check):
        case Answer.VERIFIED:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        case Answer.REFUSED:
            raise NotFound("no such push URL")
        case Answer.ECHO:
            echo = HandshakeOut(challenge=challenge, hub_challenge=hub_challenge)
            return JSONResponse(echo.model_dump(by_alias=True, exclude_none=True))


@router.head(_PUSH, response_class=Response, include_in_schema=False)
async def push_probe(work: Work, limiter: Limiter, token: str) -> Response:
    """Withings checks a callback URL with a HEAD before subscribing it"""
    await service.check(work.session, limiter, token, Handshake())
    return Response(status_code=status.HTTP_200_OK)
