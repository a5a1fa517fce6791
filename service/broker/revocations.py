"""Revoked API keys, told to every API process through Redis.

API processes remember verified keys for a few seconds (`service.auth.cache`). When a
key is revoked, a marker `<prefix>:api-key-revoked:<key prefix>` is set and the key's
prefix is published on `<prefix>:api-key-revoked`, in one round trip. Each API process
listens on that channel (`RevocationListener`) and forgets the key at once, with the
share of its rate limit it holds (`service.broker.rate_limit.LocalShares`). While a
process is not listening (Redis away, or resubscribing), each request with a
remembered key reads the marker instead, in the same Lua call as its rate limit
(`RateLimiter.check(flag=...)`), and a marked key is looked up in the database again;
when it listens again, it forgets every remembered key and share (a revocation
published meanwhile was missed). The database stays the truth: the marker and the
message only say "ask again", so a stale one (a revoked dev key installed again, say)
costs lookups, never a wrong refusal.

The marker outlives every cache entry made before the revocation (`MARKER_SECONDS`
past the longest cache time); after that, those entries are gone anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.broker.channel import Subscription

log = logging.getLogger(__name__)

MARKER_SECONDS = 3600
"""How long a revocation marker lasts: far past any sane `BACKSYNC_API_KEY_CACHE_SECONDS`."""


def revoked_marker(redis_prefix: str, key_prefix: str) -> str:
    return f"{redis_prefix}:api-key-revoked:{key_prefix}"


def revoked_channel(redis_prefix: str) -> str:
    return f"{redis_prefix}:api-key-revoked"


async def mark_revoked(redis: Redis, redis_prefix: str, key_prefix: str) -> bool:
    """Set the marker; False (logged) when Redis cannot be reached: the API processes'
    caches then let the key through for at most their cache time."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(revoked_marker(redis_prefix, key_prefix), 1, ex=MARKER_SECONDS)
            pipe.publish(revoked_channel(redis_prefix), key_prefix)
            await pipe.execute()
    except (RedisError, OSError, TimeoutError):
        log.warning("could not tell the API processes through Redis", exc_info=True)
        return False
    return True


async def announce_revoked(redis_url: str, redis_prefix: str, key_prefix: str) -> bool:
    """`mark_revoked` from a process with no Redis client of its own (the CLI)."""
    redis = Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return await mark_revoked(redis, redis_prefix, key_prefix)
    finally:
        await redis.aclose()


async def is_marked(redis: Redis, redis_prefix: str, key_prefix: str) -> bool:
    """The marker, asked on its own (when no rate limit call carries the question).
    Raises what Redis raises: the caller asks through the outage guard
    (`service.broker.outage`), which fails open and remembers that Redis is away."""
    return bool(await redis.exists(revoked_marker(redis_prefix, key_prefix)))


class RevocationListener:
    """Calls `forget(key prefix)` for each key revoked while it listens, and
    `forget_all()` each time it starts listening (again)."""

    def __init__(
        self,
        redis: Redis,
        redis_prefix: str,
        *,
        forget: Callable[[str], None],
        forget_all: Callable[[], None],
    ) -> None:
        async def subscribed() -> None:
            forget_all()

        self._subscription = Subscription(
            redis,
            revoked_channel(redis_prefix),
            lambda data: forget(data.decode("utf-8", "replace")),
            on_subscribed=subscribed,
            purpose="revoked API keys",
        )

    @property
    def listening(self) -> bool:
        """True while a revocation reaches this process at once."""
        return self._subscription.listening

    def start(self) -> None:
        self._subscription.start()

    async def close(self) -> None:
        await self._subscription.close()
