"""Upstream politeness shared across tasks (SPEC §3): one budget per upstream host.

Every request waits on its host's budget first: a hold (set when the upstream answered
429, or 503, with `Retry-After`) stops every task on that host until it passes, and a
task's `limits.requests_per_second` meters a token bucket the host's tasks share
(burst = max(1, rps)). Rates are per call: a stricter task on a shared host waits
longer for its own requests; tasks without a rate only respect holds.

`HostBudget` is what the engine needs; `MemoryBudget` serves one process (tests, a
single dev worker); `service.broker.budget.RedisBudget` serves every worker at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from service.sync.errors import HostHeld

DEFAULT_MAX_HOLD = 3600.0
"""An upstream's `Retry-After` is believed up to an hour: a misbehaving answer should not
silence a host shared by other tasks for days."""


class HostBudget(Protocol):
    async def acquire(self, host: str, requests_per_second: float | None) -> None:
        """Return when a request to `host` may go (raise `HostHeld` rather than wait long)."""
        ...

    async def hold(self, host: str, seconds: float) -> None:
        """No request to `host`, from any task, until `seconds` have passed."""
        ...


def host_key(url: httpx.URL) -> str:
    """`host:port`, lowercased: what one budget covers (one origin server, any scheme)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    host = url.host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def held_back(host: str, wait: float, *, held: bool) -> HostHeld:
    """What a budget raises instead of sleeping longer than its `max_wait`."""
    why = "held back by the upstream's Retry-After" if held else "over its request budget"
    return HostHeld(f"{host} is {why} for another {wait:.1f}s", retry_after=wait)


def over(wait: float, max_wait: float | None) -> bool:
    return max_wait is not None and wait > max_wait


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class Holds:
    """Hosts held back and until when, by `clock`: what a budget keeps in memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def hold(self, host: str, seconds: float) -> None:
        """The latest word wins, shorter or longer."""
        self._until[host] = self._clock() + seconds

    def left(self, host: str) -> float:
        """Seconds until `host` may be asked again (0: not held)."""
        until = self._until.get(host)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._until[host]
        return max(0.0, left)


class MemoryBudget:
    """`HostBudget` inside one process (tests, dev): the same rules as the Redis one."""

    def __init__(
        self,
        *,
        max_wait: float | None = None,
        max_hold: float = DEFAULT_MAX_HOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_wait = max_wait
        self.max_hold = max_hold
        self._clock = clock
        self._holds = Holds(clock)
        self._buckets: dict[str, _Bucket] = {}

    async def acquire(self, host: str, requests_per_second: float | None) -> None:
        while True:
            held = self._holds.left(host)
            if held > 0:
                await self._wait(host, held, held=True)
                continue
            wait = self._reserve(host, requests_per_second)
            if wait > 0:
                await self._wait(host, wait, held=False)
            return

    async def hold(self, host: str, seconds: float) -> None:
        if seconds > 0:
            self._holds.hold(host, min(seconds, self.max_hold))

    async def _wait(self, host: str, seconds: float, *, held: bool) -> None:
        if over(seconds, self.max_wait):
            raise held_back(host, seconds, held=held)
        await asyncio.sleep(seconds)

    def _reserve(self, host: str, rps: float | None) -> float:
        """Take a token, possibly one not yet refilled; the wait until it is due.

        Reserving (tokens may go below zero) instead of polling keeps waiters in order
        and costs one step per request; a wait that would be too long reserves nothing.
        """
        if rps is None:
            return 0.0
        now, burst = self._clock(), max(1.0, rps)
        bucket = self._buckets.setdefault(host, _Bucket(burst, now))
        tokens = min(burst, bucket.tokens + (now - bucket.updated) * rps)
        wait = max(0.0, (1 - tokens) / rps)
        if not over(wait, self.max_wait):
            bucket.tokens, bucket.updated = tokens - 1, now
        return wait
