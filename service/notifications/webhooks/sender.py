"""The sender: claims due deliveries, POSTs each once, and records the attempt.

A claim is one UPDATE of due rows (PostgreSQL `FOR UPDATE SKIP LOCKED`; SQLite: one
writer at a time) that counts the attempt and pushes `next_attempt_at` past the
attempt's timeout: that is the claim's lease. A sender killed mid-request leaves the
delivery to be claimed again once the lease lapses, with the same `webhook-id`, so
delivery is at least once and receivers dedupe by that id. An attempt's result is
written only if the delivery is still at that attempt (the fence), and the endpoint
row is always written before the delivery row, the order the API and the fan-out take
them in.

An answer in 2xx is a success. Anything else (another status, a redirect, which is
not followed, a timeout, a refused connection or target) is a failure, retried after
`webhook_retry_delays[n]`; after the last, the delivery is `failed`. An endpoint whose
attempts have failed for `webhook_disable_after_days` with no success in between is
disabled, with a `webhook.disabled` event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.config import Settings
from service.crypto import SecretBox
from service.db import SessionMaker, transaction
from service.models.types import UTCDateTime, utcnow
from service.notifications import catalog
from service.notifications.outbox import NewEvent, append
from service.notifications.webhooks import signing
from service.notifications.webhooks.fanout import WEBHOOK
from service.notifications.webhooks.repository import DELIVERY, end_pending
from service.sync import TargetRefused, UpstreamClient

log = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 2.0
"""A claim lapses this long after the attempt's timeout would have ended it."""
LOG_LENGTH = 20
"""Attempts kept in a delivery's `attempt_log` (the default schedule makes 8)."""
READ_LIMIT = 64 * 1024
"""Bytes of an answer read (and dropped) so its connection can be reused."""

_DUE = (
    select(DELIVERY.c.id)
    .where(DELIVERY.c.next_attempt_at <= bindparam("now", type_=UTCDateTime()))
    .order_by(DELIVERY.c.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(DELIVERY)
    .where(DELIVERY.c.id.in_(_DUE.scalar_subquery()))
    .values(
        next_attempt_at=bindparam("lease_until", type_=UTCDateTime()),
        attempts=DELIVERY.c.attempts + 1,
    )
    .returning(
        DELIVERY.c.id,
        DELIVERY.c.tenant_id,
        DELIVERY.c.webhook_id,
        DELIVERY.c.message_id,
        DELIVERY.c.payload,
        DELIVERY.c.attempts,
        DELIVERY.c.attempt_log,
    )
)
_ENDPOINTS = select(
    WEBHOOK.c.id,
    WEBHOOK.c.url,
    WEBHOOK.c.secret_ciphertext,
    WEBHOOK.c.previous_secret_ciphertext,
    WEBHOOK.c.previous_secret_until,
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this sender is attempting now, with where and how to sign it."""

    id: str
    tenant_id: str
    webhook_id: str
    message_id: str
    payload: str
    attempt: int
    log: list[dict[str, Any]]
    url: str
    keys: list[str]


@dataclass(frozen=True, slots=True)
class Attempt:
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def entry(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


class Sender:
    def __init__(
        self,
        sessionmaker: SessionMaker,
        secrets: SecretBox,
        http: UpstreamClient,
        settings: Settings,
    ) -> None:
        self._sessionmaker, self._secrets, self._http = sessionmaker, secrets, http
        self._timeout = settings.webhook_timeout_seconds
        self._delays = settings.webhook_retry_delays
        self._disable_after = timedelta(days=settings.webhook_disable_after_days)

    async def close(self) -> None:
        await self._http.aclose()

    async def claim(self, limit: int) -> list[Claimed]:
        """Up to `limit` due deliveries, now attempted by this sender."""
        now = utcnow()
        lease_until = now + timedelta(seconds=self._timeout + LEASE_MARGIN_SECONDS)
        async with transaction(self._sessionmaker) as session:
            rows = (
                await session.execute(
                    _CLAIM, {"now": now, "limit": limit, "lease_until": lease_until}
                )
            ).all()
            if not rows:
                return []
            ids = {row.webhook_id for row in rows}
            endpoints = {
                e.id: e for e in await session.execute(_ENDPOINTS.where(WEBHOOK.c.id.in_(ids)))
            }
        return [self._claimed(row, endpoints[row.webhook_id], now) for row in rows]

    def _claimed(self, row: Any, endpoint: Any, now: datetime) -> Claimed:
        """The delivery with its endpoint's signing keys: the secret, and the previous
        one while its grace period lasts."""
        keys = [self._secrets.decrypt_json(endpoint.secret_ciphertext)]
        until = endpoint.previous_secret_until
        if endpoint.previous_secret_ciphertext and until is not None and until > now:
            keys.append(self._secrets.decrypt_json(endpoint.previous_secret_ciphertext))
        return Claimed(
            id=row.id,
            tenant_id=row.tenant_id,
            webhook_id=row.webhook_id,
            message_id=row.message_id,
            payload=row.payload,
            attempt=row.attempts,
            log=list(row.attempt_log or []),
            url=endpoint.url,
            keys=keys,
        )

    async def deliver(self, delivery: Claimed) -> bool:
        """Attempt it and record the attempt; True when that wrote an event (the
        endpoint was disabled)."""
        attempt = await self.attempt(delivery)
        async with transaction(self._sessionmaker) as session:
            if attempt.ok:
                await _succeeded(session, delivery, attempt)
                return False
            return await self._failed(session, delivery, attempt)

    async def attempt(self, delivery: Claimed) -> Attempt:
        """POST the payload, signed, within the timeout; never raises."""
        body = delivery.payload.encode()
        at, started = utcnow(), time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._timeout):
                status_code = await self._post(delivery, body)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except TimeoutError:
            error = f"timeout after {self._timeout:g} s"
        except TargetRefused as exc:
            error = exc.message
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = int((time.monotonic() - started) * 1000)
        return Attempt(at, status_code, error and error[:500], duration_ms)

    async def _post(self, delivery: Claimed, body: bytes) -> int:
        headers = signing.headers(delivery.keys, delivery.message_id, body)
        request = self._http.build_request(
            "POST", delivery.url, content=body, headers=headers, timeout=self._timeout
        )
        response = await self._http.send_once(request)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= READ_LIMIT:
                    break
        finally:
            await response.aclose()
        return response.status_code

    async def _failed(self, session: AsyncSession, delivery: Claimed, attempt: Attempt) -> bool:
        """Schedule the next attempt (or give up); disable an endpoint that has been
        failing for too long, ending its other pending deliveries."""
        disabled = await self._disable_if_failing(session, delivery, attempt.at)
        retry = delivery.attempt <= len(self._delays) and disabled is None
        delay = self._delays[delivery.attempt - 1] if retry else 0.0
        next_at = attempt.at + timedelta(seconds=delay) if retry else None
        await _record(session, delivery, attempt, "pending" if retry else "failed", next_at)
        if disabled is None:
            return False
        await end_pending(session, delivery.webhook_id)
        await append(session, delivery.tenant_id, [disabled], attempt.at)
        return True

    async def _disable_if_failing(
        self, session: AsyncSession, delivery: Claimed, now: datetime
    ) -> NewEvent | None:
        """Start the endpoint's failure streak, or, when it is old enough, disable the
        endpoint: then the `webhook.disabled` event to write."""
        await session.execute(
            update(WEBHOOK)
            .where(WEBHOOK.c.id == delivery.webhook_id, WEBHOOK.c.failing_since.is_(None))
            .values(failing_since=now)
        )
        result = await session.execute(
            update(WEBHOOK)
            .where(
                WEBHOOK.c.id == delivery.webhook_id,
                WEBHOOK.c.disabled.is_(False),
                WEBHOOK.c.failing_since <= now - self._disable_after,
            )
            .values(disabled=True, disabled_reason="failing", updated_at=now)
            .returning(WEBHOOK.c.url, WEBHOOK.c.failing_since)
        )
        row = result.first()
        if row is None:
            return None
        log.warning("webhook %s disabled: failing since %s", delivery.webhook_id, row.failing_since)
        return catalog.webhook_disabled(delivery.webhook_id, row.url, row.failing_since)


async def _succeeded(session: AsyncSession, delivery: Claimed, attempt: Attempt) -> None:
    await session.execute(
        update(WEBHOOK)
        .where(WEBHOOK.c.id == delivery.webhook_id, WEBHOOK.c.failing_since.is_not(None))
        .values(failing_since=None)
    )
    await _record(session, delivery, attempt, "succeeded", None)


async def _record(
    session: AsyncSession,
    delivery: Claimed,
    attempt: Attempt,
    status: str,
    next_at: datetime | None,
) -> None:
    """Write the attempt, fenced: only if the delivery is still at this attempt (a
    sender whose lease lapsed, or an endpoint disabled meanwhile, writes nothing)."""
    await session.execute(
        update(DELIVERY)
        .where(
            DELIVERY.c.id == delivery.id,
            DELIVERY.c.attempts == delivery.attempt,
            DELIVERY.c.status == "pending",
        )
        .values(
            status=status,
            next_attempt_at=next_at,
            last_attempt_at=attempt.at,
            last_status_code=attempt.status_code,
            last_error=attempt.error,
            attempt_log=[*delivery.log, attempt.entry()][-LOG_LENGTH:],
        )
    )
