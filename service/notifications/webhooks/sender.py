"""The sender: claims due deliveries, POSTs each once, and records the attempt.

A claim is one UPDATE of due rows (PostgreSQL `FOR UPDATE SKIP LOCKED`; SQLite: one
writer at a time) that counts the attempt and pushes `next_attempt_at` past the
attempt's timeout: that is the claim's lease. A sender killed mid-request leaves the
delivery to be claimed again once the lease lapses, with the same `webhook-id`, so
delivery is at least once and receivers dedupe by that id. Attempts are recorded in
batches (`record`), each only if its delivery is still at that attempt (the fence).

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
from service.crypto import SecretBox, SecretBoxError
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
UNSIGNABLE = "not sent: the signing secret cannot be decrypted with BACKSYNC_SECRET_KEYS"
READ_LIMIT = 64 * 1024
"""Bytes of an answer read (and dropped) so its connection can be reused."""

_DUE = select(DELIVERY.c.id).where(
    DELIVERY.c.next_attempt_at <= bindparam("now", type_=UTCDateTime())
)
_ANY_DUE = _DUE.limit(1)
"""The idle pass: a read of one index entry, no lock."""
_CLAIM = (
    update(DELIVERY)
    .where(
        DELIVERY.c.id.in_(
            _DUE.order_by(DELIVERY.c.next_attempt_at)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
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
_NOT_FAILING = (
    update(WEBHOOK)
    .where(WEBHOOK.c.id.in_(bindparam("ids", expanding=True)), WEBHOOK.c.failing_since.is_not(None))
    .values(failing_since=None)
)
_RECORD = (
    update(DELIVERY)
    .where(
        # Fenced: only if the delivery is still at this attempt (a sender whose claim
        # lapsed, or an endpoint disabled meanwhile, writes nothing).
        DELIVERY.c.id == bindparam("delivery_id"),
        DELIVERY.c.attempts == bindparam("attempt"),
        DELIVERY.c.status == "pending",
    )
    .values(
        status=bindparam("new_status"),
        next_attempt_at=bindparam("next_at"),
        last_attempt_at=bindparam("at"),
        last_status_code=bindparam("code"),
        last_error=bindparam("error"),
        attempt_log=bindparam("log"),
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
            if (await session.execute(_ANY_DUE, {"now": now})).first() is None:
                return []
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

    def _keys(self, endpoint: Any, now: datetime) -> list[str]:
        """The endpoint's signing keys: the secret, and the previous one while its grace
        period lasts; none when they cannot be decrypted (`BACKSYNC_SECRET_KEYS` lost
        the key), which fails that delivery's attempts, not the whole claim."""
        ciphertexts = [endpoint.secret_ciphertext]
        until = endpoint.previous_secret_until
        if endpoint.previous_secret_ciphertext and until is not None and until > now:
            ciphertexts.append(endpoint.previous_secret_ciphertext)
        try:
            return [self._secrets.decrypt_json(ciphertext) for ciphertext in ciphertexts]
        except SecretBoxError:
            log.error("webhook %s: its signing secret cannot be decrypted", endpoint.id)
            return []

    def _claimed(self, row: Any, endpoint: Any, now: datetime) -> Claimed:
        return Claimed(
            id=row.id,
            tenant_id=row.tenant_id,
            webhook_id=row.webhook_id,
            message_id=row.message_id,
            payload=row.payload,
            attempt=row.attempts,
            log=list(row.attempt_log or []),
            url=endpoint.url,
            keys=self._keys(endpoint, now),
        )

    async def record(self, results: list[tuple[Claimed, Attempt]]) -> bool:
        """Write a batch of attempts in one transaction (one connection, however many
        attempts are in flight); True when that wrote an event (an endpoint disabled).

        Rows are taken in one order, endpoints, then deliveries, then the tenant (the
        event), the order the API and the fan-out take them in.
        """
        now = utcnow()
        async with transaction(self._sessionmaker) as session:
            succeeded = {d.webhook_id for d, attempt in results if attempt.ok}
            failing = sorted({d.webhook_id for d, attempt in results if not attempt.ok})
            if succeeded:
                await session.execute(_NOT_FAILING, {"ids": list(succeeded)})
            disabled = {
                d.webhook_id: event
                for d in _first_per_webhook(results, failing)
                if (event := await self._disable_if_failing(session, d, now)) is not None
            }
            rows = [self._outcome(d, attempt, d.webhook_id in disabled) for d, attempt in results]
            await session.execute(_RECORD, rows)
            for d in _first_per_webhook(results, list(disabled)):
                await end_pending(session, d.webhook_id)
                await append(session, d.tenant_id, [disabled[d.webhook_id]], now)
        return bool(disabled)

    def _outcome(self, delivery: Claimed, attempt: Attempt, disabled: bool) -> dict[str, Any]:
        """The delivery after `attempt`: done, or due again after the schedule's next
        delay, or failed for good (the schedule is spent, or its endpoint was disabled)."""
        if attempt.ok:
            status, next_at = "succeeded", None
        elif delivery.attempt <= len(self._delays) and not disabled:
            status = "pending"
            next_at = attempt.at + timedelta(seconds=self._delays[delivery.attempt - 1])
        else:
            status, next_at = "failed", None
        return {
            "delivery_id": delivery.id,
            "attempt": delivery.attempt,
            "new_status": status,
            "next_at": next_at,
            "at": attempt.at,
            "code": attempt.status_code,
            "error": attempt.error,
            "log": [*delivery.log, attempt.entry()][-LOG_LENGTH:],
        }

    async def attempt(self, delivery: Claimed) -> Attempt:
        """POST the payload, signed, within the timeout; never raises."""
        body = delivery.payload.encode()
        at, started = utcnow(), time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            if not delivery.keys:
                raise SecretBoxError(UNSIGNABLE)
            async with asyncio.timeout(self._timeout):
                status_code = await self._post(delivery, body)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except TimeoutError:
            error = f"timeout after {self._timeout:g} s"
        except TargetRefused as exc:
            error = exc.message
        except SecretBoxError:
            error = UNSIGNABLE
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

    async def _disable_if_failing(
        self, session: AsyncSession, delivery: Claimed, now: datetime
    ) -> NewEvent | None:
        """Start the endpoint's failure streak, or, when it is old enough, disable the
        endpoint: then the `webhook.disabled` event to write (after its deliveries)."""
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


def _first_per_webhook(results: list[tuple[Claimed, Attempt]], ids: list[str]) -> list[Claimed]:
    """One delivery of each endpoint in `ids` (for its tenant and id), in `ids` order."""
    first: dict[str, Claimed] = {}
    for delivery, _ in results:
        first.setdefault(delivery.webhook_id, delivery)
    return [first[webhook_id] for webhook_id in ids]
