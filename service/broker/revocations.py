"""Revoked API keys, told to every API process through Redis.

API processes remember verified keys for a few seconds (`service.auth.cache`). When a
key is revoked, a marker `<prefix>:api-key-revoked:<key prefix>` is set; each request
with a remembered key reads it in the same Lua call as its rate limit
(`RateLimiter.check(flag=...)`), and a marked key is looked up in the database again.
The database stays the truth: the marker only says "ask again", so a stale marker (a
revoked dev key installed again, say) costs lookups, never a wrong refusal.

The marker outlives every cache entry made before the revocation (`MARKER_SECONDS`
past the longest cache time); after that, those entries are gone anyway.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

MARKER_SECONDS = 3600
"""How long a revocation marker lasts: far past any sane `BACKSYNC_API_KEY_CACHE_SECONDS`."""


def revoked_marker(redis_prefix: str, key_prefix: str) -> str:
    return f"{redis_prefix}:api-key-revoked:{key_prefix}"


async def mark_revoked(redis: Redis, redis_prefix: str, key_prefix: str) -> bool:
    """Set the marker; False (logged) when Redis cannot be reached: the API processes'
    caches then let the key through for at most their cache time."""
    try:
        await redis.set(revoked_marker(redis_prefix, key_prefix), 1, ex=MARKER_SECONDS)
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
