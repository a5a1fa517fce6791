"""The shared upstream budget in Redis: one bucket and one hold per host, for every
worker process at once (SPEC §3 "Upstream politeness").

One Lua script answers "may I send now?" atomically: it checks the host's hold, then
takes a token from the host's bucket — possibly one not refilled yet, in which case it
says how long to sleep. The clock is Redis's own (`TIME`), so workers on machines with
skewed clocks still share one rate. Keys:

- `<prefix>:bucket:<host:port>`: hash {tokens, ts}; expires once it would be full again;
- `<prefix>:hold:<host:port>`: exists while the host is held; its PX expiry is the hold.

A worker that `start`s its budget also listens for holds: each hold is published on
`<prefix>:holds` as it is set, and a listening budget keeps them in memory, so a request
to a host without a rate limit (most of them) asks Redis nothing. It subscribes before
it loads the holds already set, so none falls in between; while it is not subscribed
(starting, or Redis gone) it asks Redis for every request, as an unstarted budget does.

Losing Redis (README "Redis outages"): a request to a host without a rate limit goes on,
held back by the holds this process knows of (heard before the outage, or set by its own
runs since); there is no shared rate to keep. A request to a host with
`limits.requests_per_second` waits for Redis, trying again every
`BACKSYNC_REDIS_PROBE_SECONDS`: a per-process bucket would multiply the upstream's rate
by the number of workers. After `BACKSYNC_REDIS_OUTAGE_MAX_WAIT_SECONDS` it raises
`BrokerUnavailable`, which ends the attempt without counting it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NoReturn

from redis.asyncio import Redis

from service import metrics
from service.broker.channel import Subscription
from service.broker.outage import BrokerUnavailable, RedisHealth, RedisUnavailable
from service.sync import DEFAULT_MAX_HOLD, Holds, held_back, over

log = logging.getLogger(__name__)

_HELD, _RESERVED, _OVER = 0, 1, 2

ACQUIRE = """
local held = redis.call('PTTL', KEYS[2])
if held > 0 then return {0, held} end
local rate = tonumber(ARGV[1])
if rate <= 0 then return {1, 0} end
local burst = math.max(1, rate)
local max_wait = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) * 1000 / rate) end
if max_wait >= 0 and wait > max_wait then return {2, wait} end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.3f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return {1, wait}
"""
"""KEYS: bucket, hold. ARGV: rate (requests/s, 0 = unmetered), max wait in ms (-1 = any).
Returns {status, ms}: 0 held for ms (nothing taken); 1 token taken, send after ms;
2 the wait would be ms, over the max (nothing taken)."""


class RedisBudget:
    """`HostBudget` shared by every process that uses the same Redis and key prefix."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        max_wait: float | None = None,
        max_hold: float = DEFAULT_MAX_HOLD,
        health: RedisHealth | None = None,
        outage_max_wait: float = 300.0,
    ) -> None:
        self._redis = redis
        self._health = health or RedisHealth()
        self.outage_max_wait = outage_max_wait
        self._prefix = prefix
        self.max_wait = max_wait
        self.max_hold = max_hold
        self._acquire = redis.register_script(ACQUIRE)
        self._channel = f"{prefix}:holds"
        self._holds = Holds()
        """The holds heard of, while `listening`."""
        self._subscription = Subscription(
            redis,
            self._channel,
            self._heard,
            on_subscribed=self._load_holds,
            purpose="upstream holds (asking Redis meanwhile)",
        )

    @property
    def listening(self) -> bool:
        return self._subscription.listening

    def _key(self, kind: str, host: str) -> str:
        return f"{self._prefix}:{kind}:{host}"

    async def start(self) -> None:
        """Listen for holds (see the module's docstring) until `close`."""
        self._subscription.start()

    async def close(self) -> None:
        await self._subscription.close()

    async def acquire(self, host: str, requests_per_second: float | None) -> None:
        if not requests_per_second and (self.listening or not self._health.up):
            await self._known_holds(host)
            return
        max_wait_ms = -1 if self.max_wait is None else int(self.max_wait * 1000)
        keys = [self._key("bucket", host), self._key("hold", host)]
        args = [requests_per_second or 0, max_wait_ms]
        outage_began: float | None = None
        while True:
            try:
                status, wait_ms = await self._health.call(
                    lambda: self._acquire(keys=keys, args=args)
                )
            except RedisUnavailable:
                if not requests_per_second:
                    await self._known_holds(host)
                    return
                outage_began = outage_began or time.monotonic()
                await self._wait_for_redis(host, outage_began)
                continue
            status, wait = int(status), int(wait_ms) / 1000
            if status == _OVER:
                _refused(host, wait, held=False)
            if wait > 0:
                await _wait(host, wait, self.max_wait, held=status == _HELD)
            if status == _RESERVED:
                return

    async def _known_holds(self, host: str) -> None:
        """Wait out the hold on `host` this process knows of (from memory)."""
        while (wait := self._holds.left(host)) > 0:
            await _wait(host, wait, self.max_wait, held=True)

    async def _wait_for_redis(self, host: str, began: float) -> None:
        waited = time.monotonic() - began
        if waited >= self.outage_max_wait:
            raise BrokerUnavailable(
                f"Redis, where the shared request budget of {host} is kept, was"
                f" unavailable for {waited:.0f} s; the run goes on in its next attempt"
                " (not counted toward retry.max_attempts)"
            )
        await asyncio.sleep(min(self._health.probe_seconds, self.outage_max_wait - waited))

    async def hold(self, host: str, seconds: float) -> None:
        """The upstream's latest word wins: a shorter `Retry-After` shortens the hold.
        Without Redis the hold is kept in this process only."""
        ms = int(min(seconds, self.max_hold) * 1000)
        if ms > 0:
            metrics.HOLDS.labels(host).inc()
            self._note(host, ms)
            try:
                await self._health.call(lambda: self._publish_hold(host, ms))
            except RedisUnavailable:
                log.info("hold on %s kept in this worker only: Redis is unavailable", host)

    async def _publish_hold(self, host: str, ms: int) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._key("hold", host), 1, px=ms)
            pipe.publish(self._channel, f"{ms} {host}")
            await pipe.execute()

    def knows_hold(self, host: str) -> bool:
        return self._holds.left(host) > 0

    def _note(self, host: str, ms: int) -> None:
        self._holds.hold(host, ms / 1000)

    def _heard(self, data: bytes) -> None:
        ms, _, host = data.decode().partition(" ")
        self._note(host, int(ms))

    async def _load_holds(self) -> None:
        start = len(self._key("hold", ""))
        async for key in self._redis.scan_iter(match=self._key("hold", "*"), count=500):
            ms = await self._redis.pttl(key)
            if ms > 0:
                self._note(key.decode()[start:], ms)


async def _wait(host: str, seconds: float, max_wait: float | None, *, held: bool) -> None:
    """Sleep for the host's budget, counted (`backsync_upstream_budget_*`); raise
    `HostHeld` instead when the wait is longer than `max_wait`."""
    if over(seconds, max_wait):
        _refused(host, seconds, held=held)
    reason = "hold" if held else "rate"
    metrics.BUDGET_WAITS.labels(host, reason).inc()
    metrics.BUDGET_WAIT_SECONDS.labels(host, reason).inc(seconds)
    await asyncio.sleep(seconds)


def _refused(host: str, seconds: float, *, held: bool) -> NoReturn:
    metrics.BUDGET_REFUSALS.labels(host, "hold" if held else "rate").inc()
    raise held_back(host, seconds, held=held)
