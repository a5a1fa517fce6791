"""The webhook API's logic: endpoints, their secrets, test pings and the delivery log.

Services only flush; the request's unit of work commits. A signing secret is returned
by `create` and `rotate_secret` and never again: it is stored encrypted (`SecretBox`,
the key that protects upstream credentials) because the worker must sign with it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from service.config import Settings
from service.crypto import SecretBox
from service.errors import Conflict, InvalidInput, NotFound
from service.http_client import target_policy
from service.ids import new_id
from service.models import Webhook, WebhookDelivery
from service.models.types import utcnow
from service.notifications.catalog import EVENT_TYPES, PING
from service.notifications.webhooks import messages, repository, signing
from service.notifications.webhooks.schemas import (
    AttemptOut,
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
from service.pagination import decode_cursor, page_cursor
from service.sync import TargetRefused, check_target

MAX_WEBHOOKS = 50
"""Endpoints per tenant: each one is read on every fan-out of the tenant's events."""


def to_out(webhook: Webhook) -> WebhookOut:
    return WebhookOut.model_validate(webhook, from_attributes=True)


def _with_secret(webhook: Webhook, secret: str) -> WebhookWithSecret:
    return WebhookWithSecret(**to_out(webhook).model_dump(), secret=secret)


def _events(events: list[str]) -> list[str]:
    """The subscription as stored: known types, each once, in the order given."""
    known = {*EVENT_TYPES, messages.ALL_EVENTS}
    for index, name in enumerate(events):
        if name not in known:
            raise InvalidInput.at(["body", "events", index], f"unknown event type {name!r}")
    return list(dict.fromkeys(events))


async def _check_url(url: str, settings: Settings) -> None:
    """Refuse now what the sender's SSRF guard would refuse at every delivery."""
    try:
        await check_target(url, target_policy(settings))
    except TargetRefused as exc:
        raise InvalidInput.at(["body", "url"], exc.message) from exc


async def list_webhooks(session: AsyncSession, tenant_id: str) -> WebhookList:
    return WebhookList(items=[to_out(w) for w in await repository.list_for(session, tenant_id)])


async def get_webhook(session: AsyncSession, tenant_id: str, webhook_id: str) -> Webhook:
    webhook = await repository.get(session, tenant_id, webhook_id)
    if webhook is None:
        raise NotFound(f"webhook {webhook_id} not found")
    return webhook


async def create(
    session: AsyncSession, secrets: SecretBox, settings: Settings, tenant_id: str, body: WebhookIn
) -> WebhookWithSecret:
    """Subscribe an endpoint. It hears about events from now on: its cursor starts at
    the tenant's last event, so subscribing never floods it with the backlog."""
    events = _events(body.events)
    await _check_url(str(body.url), settings)
    if await repository.count(session, tenant_id) >= MAX_WEBHOOKS:
        raise Conflict(f"a tenant may have at most {MAX_WEBHOOKS} webhooks")
    secret = signing.new_secret()
    webhook = Webhook(
        id=new_id("wh"),
        tenant_id=tenant_id,
        url=str(body.url),
        events=events,
        after_seq=await repository.event_seq(session, tenant_id),
        secret_ciphertext=secrets.encrypt_json(secret),
    )
    session.add(webhook)
    await session.flush()
    return _with_secret(webhook, secret)


async def update(
    session: AsyncSession, settings: Settings, tenant_id: str, webhook_id: str, patch: WebhookPatch
) -> Webhook:
    """Change the URL, the events or `disabled`. Disabling ends the pending deliveries
    (`failed`, "webhook disabled"); re-enabling resumes from now, as a new endpoint
    would, and forgets the failure streak."""
    webhook = await get_webhook(session, tenant_id, webhook_id)
    if patch.url is not None:
        await _check_url(str(patch.url), settings)
        webhook.url = str(patch.url)
    if patch.events is not None:
        webhook.events = _events(patch.events)
    if patch.disabled is True and not webhook.disabled:
        webhook.disabled, webhook.disabled_reason = True, "client"
        # Write the endpoint's row first: it waits for a fan-out pass holding it, so the
        # deliveries that pass makes are committed, and ended below; and it takes the
        # webhook before its deliveries, the order the sender's record takes them in.
        await session.flush()
        await repository.end_pending(session, webhook.id)
    elif patch.disabled is False and webhook.disabled:
        webhook.disabled, webhook.disabled_reason, webhook.failing_since = False, None, None
        webhook.after_seq = await repository.event_seq(session, tenant_id)
    webhook.updated_at = utcnow()
    await session.flush()
    return webhook


async def delete(session: AsyncSession, tenant_id: str, webhook_id: str) -> None:
    await get_webhook(session, tenant_id, webhook_id)
    await repository.remove(session, webhook_id)


async def rotate_secret(
    session: AsyncSession, secrets: SecretBox, tenant_id: str, webhook_id: str, body: RotateSecretIn
) -> WebhookWithSecret:
    """A new secret, returned once; deliveries carry signatures with both the new and the
    old one for `grace_seconds`, so receivers can switch over without missing any."""
    webhook = await get_webhook(session, tenant_id, webhook_id)
    secret = signing.new_secret()
    now = utcnow()
    webhook.previous_secret_ciphertext = webhook.secret_ciphertext if body.grace_seconds else None
    webhook.previous_secret_until = (
        now + timedelta(seconds=body.grace_seconds) if body.grace_seconds else None
    )
    webhook.secret_ciphertext = secrets.encrypt_json(secret)
    webhook.updated_at = now
    await session.flush()
    return _with_secret(webhook, secret)


async def send_test(session: AsyncSession, tenant_id: str, webhook_id: str) -> DeliveryOut:
    """A `ping` delivery for this endpoint alone (not an event: the feed never shows it),
    sent by the worker like any other delivery. A disabled endpoint gets it too: it is an
    explicit request, the way to check an endpoint before enabling it again."""
    webhook = await get_webhook(session, tenant_id, webhook_id)
    now = utcnow()
    message_id = new_id("evt")
    data = {"webhook_id": webhook.id, "url": webhook.url}
    row = messages.delivery_row(
        tenant_id=tenant_id,
        webhook_id=webhook.id,
        message_id=message_id,
        event_type=PING,
        payload=messages.body(message_id, PING, now, data),
        due=now,
    )
    return delivery_out(await repository.add_delivery(session, row))


def delivery_out(delivery: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        message_id=delivery.message_id,
        event_type=delivery.event_type,
        status=delivery.status,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        attempt_log=[AttemptOut.model_validate(entry) for entry in delivery.attempt_log],
        created_at=delivery.created_at,
    )


async def list_deliveries(
    session: AsyncSession,
    tenant_id: str,
    webhook_id: str,
    *,
    status: DeliveryStatus | None,
    cursor: str | None,
    limit: int,
) -> DeliveryPage:
    await get_webhook(session, tenant_id, webhook_id)
    rows = await repository.deliveries(
        session, webhook_id, status=status, before=decode_cursor(cursor), limit=limit
    )
    return DeliveryPage(
        items=[delivery_out(row) for row in rows[:limit]],
        next_cursor=page_cursor([row.id for row in rows], limit),
    )
