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

A busy API process takes a key's calls from Redis a batch at a time (`LocalShares`):
the same script grants up to `want` calls at once and takes back the ones a process
did not use.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from service.broker.outage import FAIL_OPEN, RedisHealth

log = logging.getLogger(__name__)

GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3] or 1)
local refund = tonumber(ARGV[4] or 0)
local flagged = 0
if KEYS[2] then flagged = redis.call('EXISTS', KEYS[2]) end
local tat = tonumber(redis.call('GET', KEYS[1]) or now) - refund * interval
if tat < now then tat = now end
local granted = math.min(want, math.floor((now - tat) / interval) + burst)
if granted < 1 then
  if refund > 0 then
    if tat > now then
      redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', tat - now)
    else
      redis.call('DEL', KEYS[1])
    end
  end
  return {tat + interval - interval * burst - now, 0, tat - now, flagged, 0}
end
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', new_tat - now)
return {0, math.floor(burst - (new_tat - now) / interval), new_tat - now, flagged, granted}
"""
"""KEYS: the limit's key, and optionally a flag key to report on. ARGV: interval in ms,
burst, and optionally how many calls to grant at most (1) and how many granted earlier
went unused (0: they are given back first). Returns {ms until a call would be allowed
(0: allowed, and counted), calls left now, ms until the bucket is full again, 1 if the
flag key exists else 0, calls granted (0 or more)}. The flag rides along so that a
caller that also needs to ask Redis a yes/no question (is this API key revoked?) spends
no second round trip on it."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the limit says about one call, in whole seconds (for the response headers)."""

    retry_after: int | None
    """None: allowed (and counted); else the seconds to wait."""
    remaining: int
    reset: int
    """Seconds until the bucket is full again."""
    flagged: bool = False
    """Whether the `flag` key given to `check` exists."""
    granted: int = 1
    """Calls granted (`RateLimiter.take`); 0 when refused."""


ALLOWED = Verdict(retry_after=None, remaining=0, reset=0)
"""A call allowed from a process's local share (`LocalShares`), with nothing else known."""


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

    async def check(self, key: str, flag: str | None = None) -> Verdict | None:
        """The verdict on one call under `key` (see `take`)."""
        return await self.take(key, flag=flag)

    async def take(
        self, key: str, *, flag: str | None = None, want: int = 1, refund: int = 0
    ) -> Verdict | None:
        """The verdict on `want` calls under `key` (up to `want` granted, at least one or
        refused); None when Redis cannot be asked. `flag`: a Redis key whose existence
        the verdict reports (`Verdict.flagged`). `refund`: calls granted earlier and not
        made, given back first.

        Fails open: with Redis unreachable a call is let through (and logged). Refusing
        every call while Redis is away would turn an outage of the limiter into an
        outage of the API (and lose push notifications); what the limit protects is
        bounded elsewhere too (one active run per task, enforced by the database).

        Nor does an outage slow calls down: `health` bounds the call, and while Redis is
        known to be away the limit is not asked at all, but for one probe a second
        (`service.broker.outage`), so a request never waits out a Redis timeout.
        """
        keys = [f"{self._prefix}:{key}"] + ([flag] if flag else [])
        args = [self._interval_ms, self.burst, want, refund]
        try:
            wait_ms, remaining, reset_ms, flagged, granted = await self._health.call(
                lambda: self._script(keys=keys, args=args)
            )
        except FAIL_OPEN:  # logged by `health` once per outage
            return None
        return Verdict(
            retry_after=max(1, math.ceil(int(wait_ms) / 1000)) if int(wait_ms) > 0 else None,
            remaining=max(0, int(remaining)),
            reset=math.ceil(int(reset_ms) / 1000),
            flagged=bool(flagged),
            granted=int(granted),
        )

    async def retry_after(self, key: str) -> int | None:
        """None when a call under `key` may go ahead (it is counted, or Redis is away);
        else the whole seconds to wait, for `Retry-After`."""
        verdict = await self.check(key)
        return None if verdict is None else verdict.retry_after


@dataclass(slots=True)
class _Share:
    calls: int = 0
    """Calls granted to this process and not made yet."""
    expires_at: float = 0.0
    batch: int = 1
    """How many calls to ask for next: doubles each time a share is used up in time,
    halves when one lapses unused."""
    asking: asyncio.Future[None] | None = None


class LocalShares:
    """A per-process share of each key's calls, taken from Redis a batch at a time.

    Why: asking Redis on every request was a fifth of the API's CPU on a
    `GET /v1/runs/{id}` (bench/api.py, issue 11 item 9: about 130 µs of 700). A key's
    calls are granted up to `max_batch` at once (the batch grows while the key is busy
    in this process: 1, 2, 4, ...), made from the share without asking Redis, and a
    share lapses `lifetime` seconds after it was granted; the calls it did not make are
    given back with the key's next request to Redis.

    A busy key's share is topped up in the background when a quarter of its batch is
    left, so its requests do not wait for Redis (under load a request that waited for
    a round trip waited for whole turns of a busy event loop: the API's tail latency,
    bench/api.py). At most one request per key and process asks Redis at a time; a
    request that finds the share empty meanwhile waits for that answer rather than
    taking a batch of its own.

    Bounds (documented in the README, `BACKSYNC_API_RATE_BURST`): every call is counted
    in Redis before it is made, but up to `lifetime` later, and a process holds at most
    `max_batch` of a key's calls, so within any window a key may make up to `max_batch`
    calls more per API process than the limit alone allows; and a share held by one
    process is not available to the others until it is used, lapses or is given back
    (a key spread thin over many processes may see a 429 a little early). Refusals come
    from Redis, with its `Retry-After`, as before.
    """

    def __init__(self, limiter: RateLimiter, *, max_batch: int, lifetime: float) -> None:
        self.limiter = limiter
        self.max_batch = max(1, max_batch)
        self._lifetime = lifetime
        self._shares: dict[str, _Share] = {}
        self._topping_up: set[asyncio.Task[None]] = set()

    async def check(self, key: str, flag: str | None = None) -> Verdict | None:
        """`RateLimiter.check`, from the share when it has a call left."""
        share = self._shares.get(key)
        if share is None:
            if len(self._shares) >= _MAX_SHARES:
                self._drop_lapsed()
            share = self._shares[key] = _Share()
        while True:
            now = time.monotonic()
            if share.calls > 0 and now < share.expires_at:
                share.calls -= 1
                if share.calls <= share.batch // 4 and share.batch >= 4 and share.asking is None:
                    self._top_up(key, share)
                return ALLOWED
            if share.asking is None:
                break
            await asyncio.shield(share.asking)
        lapsed = share.calls
        if lapsed:
            share.batch = max(1, share.batch // 2)
        elif now < share.expires_at:  # used up before it lapsed: a busy key
            share.batch = min(self.max_batch, share.batch * 2)
        share.calls = 0
        share.asking = asyncio.get_running_loop().create_future()
        try:
            verdict = await self.limiter.take(key, flag=flag, want=share.batch, refund=lapsed)
        finally:
            share.asking.set_result(None)
            share.asking = None
        if verdict is None or verdict.granted < 1:
            share.expires_at = 0.0
            return verdict
        share.calls, share.expires_at = verdict.granted - 1, time.monotonic() + self._lifetime
        return verdict

    def _top_up(self, key: str, share: _Share) -> None:
        """Ask for the rest of a busy key's batch (a larger one: it was used up in
        time) without a request waiting for it. No revocation flag: shares are only
        used while revocations reach the process at once."""
        share.batch = min(self.max_batch, share.batch * 2)
        share.asking = asyncio.get_running_loop().create_future()
        want = share.batch - share.calls

        async def ask(asking: asyncio.Future[None]) -> None:
            try:
                verdict = await self.limiter.take(key, want=want)
            finally:
                asking.set_result(None)
                share.asking = None
            if verdict is not None and verdict.granted > 0:
                share.calls += verdict.granted
                share.expires_at = time.monotonic() + self._lifetime

        task = asyncio.create_task(ask(share.asking))
        self._topping_up.add(task)
        task.add_done_callback(self._topping_up.discard)

    def drop(self, key: str) -> None:
        """Forget `key`'s share (its unmade calls are not given back)."""
        self._shares.pop(key, None)

    def clear(self) -> None:
        self._shares.clear()

    def _drop_lapsed(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._shares.items() if s.expires_at < now and not s.asking]:
            del self._shares[key]
        if len(self._shares) >= _MAX_SHARES:
            self._shares.clear()


_MAX_SHARES = 10_000
"""Keys with a share in one process at most (lapsed ones go first)."""
