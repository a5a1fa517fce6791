"""Revoked API keys, told to every API process through Redis.

API processes remember verified keys for a few seconds (`service.auth.cache`). When a
key is revoked, a marker `<prefix>:api-key-revoked:<key prefix>` is set and the key's
prefix is published on `<prefix>:api-key-revoked`, in one round trip. Each API process
listens on that channel (`RevocationListener`), forgets the key with the share of its
rate limit it holds (`service.broker.rate_limit.LocalShares`), and confirms; the revoker
returns once every listening process has confirmed (or after `CONFIRM_SECONDS`), so a
request sent after `backsync keys revoke` returned is refused, as when every request
read the marker. While a
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

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from service.broker.channel import Subscription
from service.broker.outage import FAIL_OPEN

log = logging.getLogger(__name__)

CONFIRM_SECONDS = 2.0
"""How long a revocation waits for the API processes to confirm it."""

MARKER_SECONDS = 3600
"""How long a revocation marker lasts: far past any sane `BACKSYNC_API_KEY_CACHE_SECONDS`."""


def revoked_marker(redis_prefix: str, key_prefix: str) -> str:
    return f"{redis_prefix}:api-key-revoked:{key_prefix}"


def revoked_channel(redis_prefix: str) -> str:
    return f"{redis_prefix}:api-key-revoked"


async def mark_revoked(
    redis: Redis, redis_prefix: str, key_prefix: str, *, confirm_seconds: float = CONFIRM_SECONDS
) -> bool:
    """Set the marker and tell the listening API processes, then wait (at most
    `confirm_seconds`) until each has confirmed it forgot the key: once this returns,
    no process that confirmed lets the key through again. False (logged) when Redis
    cannot be reached: the API processes' caches then let the key through for at most
    their cache time."""
    nonce = secrets.token_hex(8)
    confirmations = _confirmations(redis_prefix, nonce)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(revoked_marker(redis_prefix, key_prefix), 1, ex=MARKER_SECONDS)
            pipe.publish(revoked_channel(redis_prefix), f"{key_prefix} {nonce}")
            _, listeners = await pipe.execute()
        confirmed = 0
        deadline = time.monotonic() + confirm_seconds
        while confirmed < int(listeners) and (left := deadline - time.monotonic()) > 0:
            # Redis takes a fractional timeout; redis-py's stubs say int.
            wait: Any = max(0.01, left)
            popped: Any = redis.blpop([confirmations], timeout=wait)
            if await popped is None:
                break
            confirmed += 1
        await redis.delete(confirmations)
    except FAIL_OPEN:
        log.warning("could not tell the API processes through Redis", exc_info=True)
        return False
    if confirmed < int(listeners):
        log.warning(
            "%d of %d API processes did not confirm the revocation within %g s; each"
            " refuses the key once it reads the message",
            int(listeners) - confirmed,
            int(listeners),
            confirm_seconds,
        )
    return True


def _confirmations(redis_prefix: str, nonce: str) -> str:
    return f"{redis_prefix}:api-key-revoked:confirmed:{nonce}"


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
    """Calls `forget(key prefix)` for each key revoked while it listens, then confirms
    it to the revoker (`mark_revoked`); and `forget_all()` each time it starts
    listening (again)."""

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

        def revoked(data: bytes) -> None:
            key_prefix, _, nonce = data.decode("utf-8", "replace").partition(" ")
            forget(key_prefix)
            if nonce:
                task = asyncio.create_task(confirm(_confirmations(redis_prefix, nonce)))
                self._confirming.add(task)
                task.add_done_callback(self._confirming.discard)

        async def confirm(confirmations: str) -> None:
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(confirmations, 1)
                    pipe.expire(confirmations, 60)
                    await pipe.execute()
            except FAIL_OPEN:
                log.info("could not confirm a revocation", exc_info=True)

        self._confirming: set[asyncio.Task[None]] = set()
        self._subscription = Subscription(
            redis,
            revoked_channel(redis_prefix),
            revoked,
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
