from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.dependencies import AppSettings, Caller, JobQueue, Secrets, Work
from service.errors import Conflict, InvalidInput, NotFound, Unauthenticated, problem_responses
from service.notifications.webhooks import service
from service.notifications.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    DeliveryStatus,
    RotateSecretIn,
    WebhookIn,
    WebhookList,
    WebhookOut,
    WebhookPatch,
    WebhookWithSecret,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
_COMMON = (Unauthenticated, InvalidInput)


@router.post(
    "",
    summary="Subscribe an endpoint",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookWithSecret,
    responses=problem_responses(*_COMMON, Conflict),
)
async def create_webhook(
    work: Work,
    caller: Caller,
    secrets: Secrets,
    settings: AppSettings,
    body: WebhookIn,
    response: Response,
) -> WebhookWithSecret:
    """Subscribe an endpoint to events

    The answer holds the signing `secret`, shown this once. The endpoint receives the
    events of the listed types that happen from now on, each signed per Standard
    Webhooks; the URL passes the same SSRF guard as task URLs.
    """
    created = await service.create(work.session, secrets, settings, caller.tenant_id, body)
    response.headers["Location"] = f"/v1/webhooks/{created.id}"
    return created


@router.get(
    "",
    summary="List webhook endpoints",
    response_model=WebhookList,
    responses=problem_responses(Unauthenticated),
)
async def list_webhooks(work: Work, caller: Caller) -> WebhookList:
    """List the endpoints (never their secrets)"""
    return await service.list_webhooks(work.session, caller.tenant_id)


@router.get(
    "/{webhook_id}",
    summary="Inspect a webhook endpoint",
    response_model=WebhookOut,
    responses=problem_responses(*_COMMON, NotFound),
)
async def get_webhook(work: Work, caller: Caller, webhook_id: str) -> WebhookOut:
    """Inspect an endpoint"""
    return service.to_out(await service.get_webhook(work.session, caller.tenant_id, webhook_id))


@router.patch(
    "/{webhook_id}",
    summary="Change, disable or re-enable an endpoint",
    response_model=WebhookOut,
    responses=problem_responses(*_COMMON, NotFound),
)
async def update_webhook(
    work: Work, caller: Caller, settings: AppSettings, webhook_id: str, patch: WebhookPatch
) -> WebhookOut:
    """Change an endpoint's URL or events, or disable / re-enable it"""
    webhook = await service.update(work.session, settings, caller.tenant_id, webhook_id, patch)
    return service.to_out(webhook)


@router.delete(
    "/{webhook_id}",
    summary="Unsubscribe an endpoint",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(*_COMMON, NotFound),
)
async def delete_webhook(work: Work, caller: Caller, webhook_id: str) -> None:
    """Unsubscribe an endpoint (its delivery log goes with it)"""
    await service.delete(work.session, caller.tenant_id, webhook_id)


@router.post(
    "/{webhook_id}/rotate-secret",
    summary="Rotate the signing secret",
    response_model=WebhookWithSecret,
    responses=problem_responses(*_COMMON, NotFound),
)
async def rotate_secret(
    work: Work, caller: Caller, secrets: Secrets, webhook_id: str, body: RotateSecretIn
) -> WebhookWithSecret:
    """Replace the signing secret; both sign deliveries during the grace period

    The new `secret` is shown this once. Until `previous_secret_until` every delivery's
    `webhook-signature` holds two signatures, `v1,<new> v1,<old>`, so a receiver still
    verifying with the old secret keeps accepting them while it is updated.
    """
    return await service.rotate_secret(work.session, secrets, caller.tenant_id, webhook_id, body)


@router.post(
    "/{webhook_id}/test",
    summary="Send a test ping",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryOut,
    responses=problem_responses(*_COMMON, NotFound),
)
async def test_webhook(work: Work, caller: Caller, queue: JobQueue, webhook_id: str) -> DeliveryOut:
    """Send a `ping` to the endpoint

    The worker delivers it like any event (signed, retried); follow it in the
    deliveries. It is not an event: `GET /v1/events` never lists it.
    """
    delivery = await service.send_test(work.session, caller.tenant_id, webhook_id)
    work.after_commit(queue.webhooks_due)  # wake a worker's sender now, not at its poll
    return delivery


@router.get(
    "/{webhook_id}/deliveries",
    summary="The delivery log",
    response_model=DeliveryPage,
    responses=problem_responses(*_COMMON, NotFound),
)
async def list_deliveries(
    work: Work,
    caller: Caller,
    webhook_id: str,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DeliveryPage:
    """The delivery log, newest first: each delivery's status, attempts (with their
    status codes and errors) and next attempt"""
    return await service.list_deliveries(
        work.session, caller.tenant_id, webhook_id, status=status, cursor=cursor, limit=limit
    )
