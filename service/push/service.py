"""Push URLs: made, listed, changed and revoked by the API (per tenant, per task), and
called by providers with no API key, the secret token being the credential.

A notification triggers the task through `service.runs.service.trigger`, the function
the API's trigger uses, with `trigger="push"`: one active run per task, so a burst of
notifications coalesces into the run that is queued or running. With the task's
`debounce_seconds`, the run a push creates waits that long (its not-before time), so
the rest of the burst joins it instead of following it with a second run.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from service.broker.rate_limit import RateLimiter
from service.db import InSession
from service.errors import NotFound, RateLimited
from service.ids import new_id
from service.models import PushUrl
from service.models.types import utcnow
from service.push import repository
from service.push.handshake import Answer, Handshake, answer, hash_code
from service.push.schemas import PushReceipt, PushUrlCreated, PushUrlIn, PushUrlOut, PushUrlPatch
from service.runs.schemas import RunOut
from service.runs.service import trigger
from service.tasks.service import get_task

TOKEN_SCHEME = "bkp"  # noqa: S105 - a prefix, not a secret


def new_token() -> str:
    """256 random bits; the scheme prefix makes a leaked token recognisable (scanners)."""
    return f"{TOKEN_SCHEME}_{secrets.token_urlsafe(32)}"


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---- the API side (authenticated, per tenant) -----------------------------------------


async def create(
    session: AsyncSession, tenant_id: str, task_id: str, body: PushUrlIn
) -> tuple[PushUrl, str]:
    """A new push URL for the task, and its token (the only time it exists in clear)."""
    task = await get_task(session, tenant_id, task_id)
    token = new_token()
    push_url = PushUrl(
        id=new_id("psh"),
        task_id=task.id,
        tenant_id=tenant_id,
        token_hash=_hash_token(token),
        verification_hash=hash_code(body.verification_code) if body.verification_code else None,
        response_status=body.response_status,
    )
    session.add(push_url)
    await session.flush()
    return push_url, token


async def list_for_task(session: AsyncSession, tenant_id: str, task_id: str) -> list[PushUrlOut]:
    task = await get_task(session, tenant_id, task_id)
    return [to_out(push_url) for push_url in await repository.for_task(session, task.id)]


async def get(session: AsyncSession, tenant_id: str, task_id: str, push_url_id: str) -> PushUrl:
    task = await get_task(session, tenant_id, task_id)
    push_url = await repository.get(session, task.id, push_url_id)
    if push_url is None:
        raise NotFound(f"push URL {push_url_id} not found")
    return push_url


async def update(
    session: AsyncSession, tenant_id: str, task_id: str, push_url_id: str, patch: PushUrlPatch
) -> PushUrl:
    push_url = await get(session, tenant_id, task_id, push_url_id)
    if "verification_code" in patch.model_fields_set:
        code = patch.verification_code
        push_url.verification_hash = hash_code(code) if code else None
    if patch.response_status is not None:
        push_url.response_status = patch.response_status
    await session.flush()
    return push_url


async def revoke(session: AsyncSession, tenant_id: str, task_id: str, push_url_id: str) -> None:
    """The row goes, so the URL answers 404 from the next call on, like one never made."""
    push_url = await get(session, tenant_id, task_id, push_url_id)
    await repository.remove(session, push_url.id)


def to_out(push_url: PushUrl) -> PushUrlOut:
    return PushUrlOut(
        id=push_url.id,
        task_id=push_url.task_id,
        response_status=push_url.response_status,
        has_verification_code=push_url.verification_hash is not None,
        created_at=push_url.created_at,
        last_called_at=push_url.last_called_at,
        call_count=push_url.call_count,
    )


def created_out(push_url: PushUrl, url: str, token: str) -> PushUrlCreated:
    return PushUrlCreated(**to_out(push_url).model_dump(), url=url, token=token)


# ---- the provider side (no API key: the token is the credential) ----------------------


@dataclass(frozen=True, slots=True)
class Notified:
    receipt: PushReceipt
    status: int
    """The push URL's `response_status`."""
    run: RunOut | None
    """A run this notification created: the caller enqueues it after the commit."""


async def _admitted(session: AsyncSession, limiter: RateLimiter, token: str) -> PushUrl:
    """The URL the token opens, within its rate; an unknown or revoked token is a 404
    that says no more than a URL never made."""
    push_url = await repository.by_token_hash(session, _hash_token(token))
    if push_url is None:
        raise NotFound("no such push URL")
    wait = await limiter.retry_after(push_url.id)
    if wait is not None:
        raise RateLimited("too many calls to this push URL", retry_after=wait)
    return push_url


async def notify(session: AsyncSession, limiter: RateLimiter, token: str) -> Notified:
    """A provider says the user has new data: run the task (coalesced, debounced)."""
    push_url = await _admitted(session, limiter, token)
    now = utcnow()
    await repository.count_call(session, push_url.id, now)
    task = await get_task(session, push_url.tenant_id, push_url.task_id)
    if task.paused:  # paused means no automatic runs; the provider still gets its 2xx
        receipt = PushReceipt(outcome="paused", starts_at=None)
        return Notified(receipt, push_url.response_status, None)
    debounce = task.debounce_seconds
    not_before = now + timedelta(seconds=debounce) if debounce else None
    run, created = await trigger(
        InSession(session), push_url.tenant_id, task.id, trigger="push", not_before=not_before
    )
    # a run waiting for its tenant's cap may start now; its `next_attempt_at` is a recheck
    waits = run.status != "queued" or run.waiting_reason is not None
    starts_at = None if waits else run.next_attempt_at
    receipt = PushReceipt(outcome="started" if created else "coalesced", starts_at=starts_at)
    return Notified(receipt, push_url.response_status, run if created else None)


async def check(
    session: AsyncSession, limiter: RateLimiter, token: str, handshake: Handshake
) -> Answer:
    """A subscription check (GET) or reachability check (HEAD): nothing runs."""
    push_url = await _admitted(session, limiter, token)
    return answer(handshake, push_url.verification_hash)
