"""A rate limit shared by every API process: GCRA (the generic cell rate algorithm) in
one Lua script, on Redis's clock.

Why Redis rather than the database: a flood of calls to one push URL is exactly what
the limit is for, and answering each rejected call with a row update would serialise
them on that row (on SQLite, on the whole database's write lock). Redis answers in one
round trip, atomically for all processes, and the key expires by itself once the
bucket is full again.

GCRA keeps one number per key, the "theoretical arrival time" (TAT): each allowed call
moves it `interval` ms later; a call is refused while it would push the TAT more than
`burst` intervals past now. So `burst` calls may come at once, then one per interval.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.broker.outage import RedisHealth

log = logging.getLogger(__name__)

GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then return {allow_at - now, 0, tat - now} end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', new_tat - now)
return {0, math.floor(burst - (new_tat - now) / interval), new_tat - now}
"""
"""KEYS: the limit's key. ARGV: interval in ms, burst. Returns {ms until the call would be
allowed (0: allowed, and counted), calls left now, ms until the bucket is full again}."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the limit says about one call, in whole seconds (for the response headers)."""

    retry_after: int | None
    """None: allowed (and counted); else the seconds to wait."""
    remaining: int
    reset: int
    """Seconds until the bucket is full again."""


class RateLimiter:
    """`rate` calls per second per key, in bursts of up to `burst`, under `name`."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        name: str,
        rate: float,
        burst: int,
        health: RedisHealth | None = None,
    ) -> None:
        self._script = redis.register_script(GCRA)
        self._health = health or RedisHealth()
        self._prefix = f"{prefix}:{name}"
        self._interval_ms = max(1, round(1000 / rate))
        self.burst = burst

    @classmethod
    def per_minute(
        cls, redis: Redis, prefix: str, name: str, calls: int, health: RedisHealth | None = None
    ) -> RateLimiter:
        """`calls` per key and minute, in bursts of up to `calls`."""
        return cls(redis, prefix, name=name, rate=calls / 60, burst=calls, health=health)

    async def check(self, key: str) -> Verdict | None:
        """The verdict on one call under `key`; None when Redis cannot be asked.

        Fails open: with Redis unreachable a call is let through (and logged). Refusing
        every call while Redis is away would turn an outage of the limiter into an
        outage of the API (and lose push notifications); what the limit protects is
        bounded elsewhere too (one active run per task, enforced by the database).

        Nor does an outage slow calls down: `health` bounds the call, and while Redis is
        known to be away the limit is not asked at all, but for one probe a second
        (`service.broker.outage`), so a request never waits out a Redis timeout.
        """
        keys, args = [f"{self._prefix}:{key}"], [self._interval_ms, self.burst]
        try:
            wait_ms, remaining, reset_ms = await self._health.call(
                lambda: self._script(keys=keys, args=args)
            )
        except (RedisError, OSError, TimeoutError):  # logged by `health` once per outage
            return None
        return Verdict(
            retry_after=max(1, math.ceil(int(wait_ms) / 1000)) if int(wait_ms) > 0 else None,
            remaining=max(0, int(remaining)),
            reset=math.ceil(int(reset_ms) / 1000),
        )

    async def retry_after(self, key: str) -> int | None:
        """None when a call under `key` may go ahead (it is counted, or Redis is away);
        else the whole seconds to wait, for `Retry-After`."""
        verdict = await self.check(key)
        return None if verdict is None else verdict.retry_after
