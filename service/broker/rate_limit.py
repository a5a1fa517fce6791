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

from redis.asyncio import Redis
from redis.exceptions import RedisError

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
if now < allow_at then return allow_at - now end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', new_tat - now)
return 0
"""
"""KEYS: the limit's key. ARGV: interval in ms, burst. Returns 0 when the call is allowed
(and counted), else the ms until it would be."""


class RateLimiter:
    """`per_minute` calls per key and minute, in bursts of up to `per_minute`."""

    def __init__(self, redis: Redis, prefix: str, per_minute: int) -> None:
        self._script = redis.register_script(GCRA)
        self._prefix = prefix
        self._interval_ms = max(1, 60_000 // per_minute)
        self._burst = per_minute

    async def retry_after(self, key: str) -> int | None:
        """None when a call under `key` may go ahead (it is counted); else the whole
        seconds to wait, for `Retry-After`.

        Fails open: with Redis unreachable a call is let through (and logged), since
        refusing every push while Redis is away would lose notifications, and a run
        cannot stack anyway (one active run per task, enforced by the database).
        """
        try:
            wait_ms = int(
                await self._script(
                    keys=[f"{self._prefix}:push-rate:{key}"],
                    args=[self._interval_ms, self._burst],
                )
            )
        except (RedisError, OSError, TimeoutError):
            log.warning("push rate limit unavailable; letting the call through", exc_info=True)
            return None
        return max(1, math.ceil(wait_ms / 1000)) if wait_ms > 0 else None
