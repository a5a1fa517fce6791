"""`Idempotency-Key` (IETF httpapi draft): one execution per key, its response replayed.

A keyed request runs three short transactions of its own, beside the request's unit of
work, because the claim must be visible to other API processes before the work starts:

1. `claim`: INSERT the `in_flight` row and commit. The primary key (tenant, scope, key)
   makes this atomic everywhere; an IntegrityError means the key is taken, and its row
   decides: replay the stored response, refuse a different request (422), or ask the
   client to retry one still running (409).
2. `finish`, after the work committed: store the response on the row for replays.
3. `finish`, after the work failed: store a final 4xx the same way; free the key for a
   5xx, a transient 409/429 or a crash, so that the client's retry runs afresh.

A claim whose process died between 1 and 2 would hold its key for a day; after `LEASE`
it counts as abandoned and the next request with the same fingerprint takes it over.
Records are kept `RETENTION`; an expired one is replaced by the next request.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode

from sqlalchemy.exc import IntegrityError

from service.db import SessionMaker, transaction
from service.errors import IdempotencyKeyInUse, IdempotencyKeyMismatch, InvalidInput
from service.idempotency import repository
from service.models import IdempotencyRecord
from service.models.types import utcnow

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
RETENTION = timedelta(hours=24)
LEASE = timedelta(seconds=60)
REPLAYED_HEADERS = ("content-type", "location")
PURGE_BATCH = 100
MAX_SCOPE = 300  # the column's width
_CLAIM_ATTEMPTS = 3
_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_SF_ESCAPE = re.compile(r"\\([\\\"])")


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """Who sent which key to which endpoint, and a digest of what they sent."""

    tenant_id: str
    scope: str
    key: str
    fingerprint: str

    @classmethod
    def of(
        cls, tenant_id: str, key: str, method: str, path: str, query: str, body: bytes
    ) -> KeyedRequest:
        return cls(tenant_id, scope_of(method, path), key, fingerprint(method, path, query, body))


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    body: bytes
    headers: dict[str, str]  # lower-case names, only REPLAYED_HEADERS

    @classmethod
    def of(cls, status_code: int, body: bytes, headers: Mapping[str, str]) -> StoredResponse:
        kept = {name: headers[name] for name in REPLAYED_HEADERS if name in headers}
        return cls(status_code, body, kept)


@dataclass(frozen=True, slots=True)
class Claim:
    """The key is ours; `token` (the row's `created_at`) proves it when we finish."""

    request: KeyedRequest
    token: datetime


def parse_key(values: Sequence[str]) -> str | None:
    """The key from the header's values; None without the header.

    The draft makes the field a Structured Field String (`"a1b2"`); the bare form most
    clients send (`a1b2`) is read as the same key.
    """
    if not values:
        return None
    if len(values) > 1:
        raise _invalid_key(f"send one {HEADER} header, not {len(values)}")
    value = values[0].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = _SF_ESCAPE.sub(r"\1", value[1:-1])
    if not _KEY.fullmatch(value):
        raise _invalid_key("must be 1 to 255 printable ASCII characters")
    return value


def _invalid_key(msg: str) -> InvalidInput:
    return InvalidInput.at(["header", HEADER], msg)


def scope_of(method: str, path: str) -> str:
    """The endpoint a key belongs to: method and concrete path (hashed if too long)."""
    scope = f"{method.upper()} {path}".encode(errors="backslashreplace").decode()
    if len(scope) <= MAX_SCOPE:
        return scope
    return f"{method.upper()} sha256:{hashlib.sha256(scope.encode()).hexdigest()}"


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """SHA-256 of the canonical request: method, path, query (parameters sorted), body
    bytes as sent. Each part is length-prefixed, so no two requests share a digest."""
    canonical_query = urlencode(sorted(parse_qsl(query, keep_blank_values=True)))
    digest = hashlib.sha256()
    for part in (method.upper(), path, canonical_query):
        encoded = part.encode(errors="backslashreplace")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    digest.update(len(body).to_bytes(8, "big") + body)
    return digest.hexdigest()


def worth_storing(status_code: int) -> bool:
    """Successes and final client errors are replayed; 409 and 429 say "try again later"
    and a 5xx is ours to fix, so those free the key instead."""
    return 200 <= status_code < 300 or (400 <= status_code < 500 and status_code not in {409, 429})


async def claim(sessionmaker: SessionMaker, request: KeyedRequest) -> Claim | StoredResponse:
    """Take the key, or return the response to replay; raises 422 for a different
    request under the same key and 409 while its first request is still running."""
    for _ in range(_CLAIM_ATTEMPTS):
        now = utcnow()
        try:
            async with transaction(sessionmaker) as session:
                await repository.delete_expired(
                    session, request.tenant_id, request.scope, request.key, now
                )
                await repository.insert(session, _in_flight(request, now))
            return Claim(request, now)
        except IntegrityError:
            pass  # taken: the holder's row decides
        async with transaction(sessionmaker) as session:
            held = await repository.get(session, request.tenant_id, request.scope, request.key)
            if held is None:
                continue  # released meanwhile
            stored = _decide(held, request, now)
            if stored is not None:
                return stored
            await repository.delete_owned(
                session, request.tenant_id, request.scope, request.key, held.created_at
            )
    raise _in_use()


def _in_flight(request: KeyedRequest, now: datetime) -> IdempotencyRecord:
    return IdempotencyRecord(
        tenant_id=request.tenant_id,
        scope=request.scope,
        key=request.key,
        fingerprint=request.fingerprint,
        state="in_flight",
        created_at=now,
        expires_at=now + RETENTION,
    )


def _decide(held: IdempotencyRecord, request: KeyedRequest, now: datetime) -> StoredResponse | None:
    """The response to replay, an error, or None: the row is dead, take it over."""
    if held.expires_at <= now:
        return None
    if held.fingerprint != request.fingerprint:
        raise IdempotencyKeyMismatch(
            f"this {HEADER} was already used with a different request (method, path, query "
            "or body); send a new key for a new request"
        )
    if held.state == "in_flight":
        if held.created_at <= now - LEASE:
            log.warning("taking over an abandoned idempotency key claim (%s)", request.scope)
            return None
        raise _in_use()
    assert held.status_code is not None
    assert held.body is not None
    return StoredResponse(held.status_code, held.body.encode(), dict(held.headers or {}))


def _in_use() -> IdempotencyKeyInUse:
    return IdempotencyKeyInUse(
        f"a request with this {HEADER} is still being processed; retry it later"
    )


async def finish(sessionmaker: SessionMaker, claim: Claim, response: StoredResponse | None) -> None:
    """The claimed request is over: keep its response for replays when it is final, or
    free the key. Then purge a few expired records, anyone's."""
    request = claim.request
    try:
        body = response.body.decode() if response else None
    except UnicodeDecodeError:
        body = None
    async with transaction(sessionmaker) as session:
        if response is None or body is None or not worth_storing(response.status_code):
            await repository.delete_owned(
                session, request.tenant_id, request.scope, request.key, claim.token
            )
        elif not await repository.complete(
            session,
            request.tenant_id,
            request.scope,
            request.key,
            claim.token,
            status_code=response.status_code,
            body=body,
            headers=response.headers,
        ):
            log.warning("an idempotency key claim lapsed before its response was stored")
    await purge_expired(sessionmaker)


async def purge_expired(sessionmaker: SessionMaker, limit: int = PURGE_BATCH) -> int:
    async with transaction(sessionmaker) as session:
        return await repository.purge_expired(session, utcnow(), limit)
