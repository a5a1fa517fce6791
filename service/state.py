"""What the API process builds once at startup and hands to every request."""

from __future__ import annotations

from typing import TypedDict

from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth.cache import KeyCache
from service.broker.queue import Queue
from service.broker.rate_limit import LocalShares, RateLimiter
from service.broker.revocations import RevocationListener
from service.config import Settings
from service.crypto import SecretBox
from service.db import QuickStatements, SessionMaker
from service.runs.events import ProgressHub
from service.sync import BodyBudget, UpstreamClient


class AppState(TypedDict):
    settings: Settings
    engine: AsyncEngine
    sessionmaker: SessionMaker
    reads: AsyncEngine
    """For requests that only read: each statement commits on its own (no BEGIN and
    COMMIT round trips); the same pool as `engine`."""
    quick: QuickStatements
    """Single statements of the hot paths (on PostgreSQL straight on asyncpg); a few of
    the process's database connections."""
    keys: KeyCache
    progress: ProgressHub
    api_limiter: LocalShares | None
    """The per-key request rate (None: `BACKSYNC_API_RATE_PER_SECOND` is 0), taken from
    Redis a batch at a time."""
    push_limiter: RateLimiter
    """Calls per push URL and minute (`BACKSYNC_PUSH_RATE_PER_MINUTE`), counted in Redis."""
    revocations: RevocationListener
    """Whether revoked keys reach this process at once (else each request asks)."""
    queue: Queue
    secrets: SecretBox
    http: UpstreamClient
    bodies: BodyBudget
    """The process's in-flight body bytes: dry runs share it (`BACKSYNC_API_MAX_INFLIGHT_BYTES`)."""
