"""API keys: `bks_<prefix>_<secret>`, stored as a SHA-256 of the whole key.

The keys carry 256 bits of randomness, so a fast hash is enough (no password
stretching needed); the prefix is public and indexes the lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import repository
from service.db import Statements
from service.errors import Unauthenticated
from service.ids import new_id
from service.models import ApiKey, Tenant
from service.models.types import utcnow

KEY_SCHEME = "bks"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    key_prefix: str


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A well-formed key's public prefix and the SHA-256 it is stored as."""

    prefix: str
    key_hash: str


def parse_key(raw_key: str) -> ParsedKey | None:
    parts = _split(raw_key)
    return None if parts is None else ParsedKey(parts[0], _hash(raw_key))


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _split(raw_key: str) -> tuple[str, str] | None:
    scheme, _, rest = raw_key.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != KEY_SCHEME or not prefix or not secret:
        return None
    return prefix, secret


async def ensure_tenant(session: AsyncSession, name: str) -> Tenant:
    tenant = await repository.tenant_by_name(session, name)
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        await session.flush()
    return tenant


async def create_key(session: AsyncSession, tenant_name: str, *, raw_key: str | None = None) -> str:
    """Make a key for the tenant (created if new); `raw_key` installs a given one (dev)."""
    tenant = await ensure_tenant(session, tenant_name)
    if raw_key is None:
        raw_key = f"{KEY_SCHEME}_{secrets.token_hex(5)}_{secrets.token_urlsafe(32)}"
    parts = _split(raw_key)
    if parts is None:
        raise ValueError("an API key looks like bks_<prefix>_<secret>")
    existing = await repository.key_by_prefix(session, parts[0])
    if existing is not None:
        if existing.key_hash != _hash(raw_key) or existing.tenant_id != tenant.id:
            raise ValueError(f"key prefix {parts[0]} is already in use")
        existing.revoked_at = None
        return raw_key
    session.add(
        ApiKey(id=new_id("key"), tenant_id=tenant.id, prefix=parts[0], key_hash=_hash(raw_key))
    )
    await session.flush()
    return raw_key


def key_prefix(key_or_prefix: str) -> str:
    """The public prefix of a whole key (`bks_<prefix>_<secret>`) or of a prefix as
    written (`<prefix>` or `bks_<prefix>`): what is safe to show back."""
    parts = _split(key_or_prefix)
    return parts[0] if parts else key_or_prefix.removeprefix(f"{KEY_SCHEME}_")


async def revoke_key(session: AsyncSession, key_or_prefix: str) -> bool:
    """Revoke by prefix or by the whole key, whichever the operator has at hand (a leaked
    key is usually pasted whole). A whole key must be the stored one: a mistyped secret
    revokes nothing rather than whichever key shares its prefix."""
    key = await repository.key_by_prefix(session, key_prefix(key_or_prefix))
    if key is None:
        return False
    if _split(key_or_prefix) and not hmac.compare_digest(key.key_hash, _hash(key_or_prefix)):
        return False
    key.revoked_at = key.revoked_at or utcnow()
    return True


def bearer_key(authorization: str | None) -> str:
    """The API key of an `Authorization: Bearer` header; 401 for anything else."""
    if not authorization:
        raise Unauthenticated("missing Authorization: Bearer <api key>")
    scheme, _, raw_key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw_key.strip():
        raise Unauthenticated("use Authorization: Bearer <api key>")
    return raw_key.strip()


async def authenticate(db: Statements, authorization: str | None) -> Principal:
    return await verify(db, bearer_key(authorization))


async def verify(db: Statements, raw_key: str) -> Principal:
    """The key's principal, as the database has it now; 401 if unknown or revoked."""
    parsed = parse_key(raw_key)
    if parsed is None:
        raise Unauthenticated("malformed API key")
    key = await repository.checked_key(db, parsed.prefix)
    if key is None or key["revoked_at"] is not None:
        raise Unauthenticated("unknown or revoked API key")
    if not hmac.compare_digest(key["key_hash"], parsed.key_hash):
        raise Unauthenticated("unknown or revoked API key")
    return Principal(tenant_id=key["tenant_id"], key_prefix=key["prefix"])
