"""Redis going away is a wait, never a failure (README "Redis outages").

Redis only carries work: the database holds every run and record. So a process that
loses Redis keeps what it can going without it and tries again, and `RedisHealth` is
how it knows, without paying a timeout per call, that Redis is away:

- every call through `RedisHealth.call` is bounded (`BACKSYNC_REDIS_TIMEOUT_SECONDS`):
  a partition that swallows packets costs that long, not forever;
- the first failure marks Redis down (one warning, with the time it went away); while
  it is down, callers that can do without Redis (the API's rate limits, an enqueue the
  reconciler will redo) are told so at once, and one call per
  `BACKSYNC_REDIS_PROBE_SECONDS` is let through to find out whether it is back;
- the first answer marks it up again (one log line saying how long it was away).

`Backoff` paces the loops that cannot do anything without Redis (the worker's queue
poll): capped exponential, reset by a success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions

from service.sync import HostHeld

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 2.0
DEFAULT_PROBE = 1.0


class RedisUnavailable(redis.exceptions.ConnectionError):
    """Redis did not answer, or is known to be away: nothing was done."""


REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # RedisUnavailable, refused, reset, closed, loading
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)
"""What losing Redis raises (a command's own error, like a script's, is not one)."""

FAIL_OPEN: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError, TimeoutError)
"""What a call that fails open lets through: losing Redis, and any error of Redis's own
(a script refused, a full memory). The rate limits and the revocation marker fail open:
their outage must not become the API's (`service.broker.rate_limit`)."""


class BrokerUnavailable(HostHeld):
    """A rate-limited host's shared budget could not be asked for longer than
    `BACKSYNC_REDIS_OUTAGE_MAX_WAIT_SECONDS`: the attempt ends, is retried, and, like
    any hold, does not count toward `retry.max_attempts` (the upstream did nothing
    wrong) and is not tried again in place (the wait was already long)."""

    code = "broker_unavailable"
    retryable = True


class RedisHealth:
    """Whether this process's Redis answered lately; see the module's docstring."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        probe_seconds: float = DEFAULT_PROBE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.probe_seconds = probe_seconds
        self._clock = clock
        self.down_since: float | None = None
        """`time.time()` of the first failure of the current outage; None while up."""
        self._next_probe = 0.0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def may_try(self) -> bool:
        """True while up, or when a probe is due (this caller is the probe: the next one
        is due `probe_seconds` later)."""
        if self.down_since is None:
            return True
        now = self._clock()
        if now < self._next_probe:
            return False
        self._next_probe = now + self.probe_seconds
        return True

    async def call(self, command: Callable[[], Awaitable[T]], *, probe: bool = False) -> T:
        """`command()` within the timeout; `RedisUnavailable` when it could not reach
        Redis, or at once while Redis is down and no probe is due (`probe=True` always
        tries: a readiness check must look)."""
        if not probe and not self.may_try():
            raise RedisUnavailable("Redis is unavailable (it stopped answering earlier)")
        try:
            async with asyncio.timeout(self.timeout):
                result = await command()
        except REDIS_DOWN as exc:
            self.failed(exc)
            raise RedisUnavailable(f"Redis is unavailable ({type(exc).__name__})") from exc
        self.answered()
        return result

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            why = f"{type(exc).__name__}: {exc}"
            log.warning("Redis is unavailable (%s); carrying on without it", why)
        self._next_probe = self._clock() + self.probe_seconds

    def answered(self) -> None:
        if self.down_since is not None:
            log.warning("Redis is back after %.1f s", time.time() - self.down_since)
            self.down_since = None


class Backoff:
    """Capped exponential delays: `first`, twice that, … up to `cap`; `reset` after a
    success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self._first, self._cap = first, cap
        self._next = first

    def reset(self) -> None:
        self._next = self._first

    def delay(self) -> float:
        """The next wait (and the one after it doubles, up to the cap)."""
        delay, self._next = self._next, min(self._cap, self._next * 2)
        return delay

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay())
