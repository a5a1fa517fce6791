"""A transient failure of one request is tried again in place before it ends the attempt.

Ending an attempt is a heavy answer to a blip: the run is rescheduled after the task's
backoff (10 s and up), its plan read again, and the attempt may count against
`retry.max_attempts`. At 1% 5xx, an attempt gets about 100 pages before a failure ends
it; tried four times in place, a page fails one time in 10^8 (1% ** 4).

Each try is a request like the first (`fetch.fetch_page`): it waits on the host's budget
again, so a hold set by a 429/503 (`budget.hold`) keeps every run on the host out of the
`Retry-After` window, this one included. This one also sleeps out its own `Retry-After`,
budget or not (the dry run has none). A `Retry-After` longer than `max_in_place_wait`
is not slept in place: the error is raised at once, the attempt ends, and the runner
schedules the next one after it (`backoff.next_delay`), the worker free meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from service.sync.backoff import full_jitter
from service.sync.errors import CutOff, HostHeld, InvalidBody, SyncError, UpstreamTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RequestRetry:
    """How a request is tried again in place; `REQUEST_RETRY` is the engine's.

    What is tried again: the failures a run reports as `retryable`, but for `HostHeld`
    (the budget already judged that wait too long to sleep). Never: other 4xx (401, 403,
    404...), a refused target, bad config, a response over the size cap, redirect loops.
    """

    tries: int = 4
    """Requests at most for one page: 5xx, 408, 429, a refused or reset connection, a body
    cut off. Four: see the module's docstring for the odds; the waits between them
    stay a few seconds in all."""
    doubtful_tries: int = 2
    """For failures that are less often blips, or cost much per try: a timeout (each try
    waits `limits.timeout_seconds`, 30 s by default; two in a row say the upstream is
    slow, not blipping) and a whole body that is not JSON or not in its Content-Encoding
    (usually what the upstream always answers, but a proxy's error page can pass)."""
    base_delay: float = 0.5
    """The first retry waits uniform(0, 0.5) s, the second (0, 1), the third (0, 2): full
    jitter, as `backoff.backoff_delay`, so pages fetched side by side, and runs failing
    together, do not come back in lockstep. 3.5 s at most, 1.75 s on average, before
    four failures end the attempt: time for a restarting instance or a failover."""
    max_delay: float = 4.0
    """The cap of one wait, should `tries` be raised: in place, waits stay short."""
    max_in_place_wait: float = 30.0
    """The longest `Retry-After` slept in place: as long as one request may take by
    default (`limits.timeout_seconds`), and under the 60 s a run waits on another run's
    hold before it parks (`BACKSYNC_UPSTREAM_BUDGET_MAX_WAIT_SECONDS`). A longer one ends
    the attempt at once; the next attempt is scheduled after it."""

    def __post_init__(self) -> None:
        if self.tries < 1 or self.doubtful_tries < 1:
            raise ValueError("a request is tried at least once")

    def tries_for(self, error: SyncError) -> int:
        """How many requests a page may take when this is how it fails."""
        match error:
            case HostHeld():
                return 1
            case _ if not error.retryable:
                return 1
            case CutOff():
                return self.tries
            case UpstreamTimeout() | InvalidBody():
                return min(self.tries, self.doubtful_tries)
        return self.tries

    def wait_before_retry(self, error: SyncError, tried: int) -> float | None:
        """Seconds to wait before request `tried + 1` after `error`; None: give up."""
        if tried >= self.tries_for(error):
            return None
        asked = error.retry_after or 0.0
        if asked > self.max_in_place_wait:
            return None
        return max(asked, full_jitter(self.base_delay, self.max_delay, tried))


REQUEST_RETRY = RequestRetry()


@dataclass(slots=True)
class RetryCount:
    """The retries sent for one page so far. The caller keeps it, so the requests a fetch
    made are known even if it is cancelled mid-way (a prediction `pages._Flight` drops)."""

    value: int = 0


async def with_retries(
    send: Callable[[], Awaitable[T]], policy: RequestRetry, count: RetryCount
) -> T:
    """`send()`, again after each failure `policy` retries; the last failure as it was."""
    while True:
        try:
            return await send()
        except SyncError as error:
            tried = count.value + 1
            wait = policy.wait_before_retry(error, tried)
            if wait is None:
                error.requests = tried
                raise
            log.info(
                "%s; retrying in %.2fs (request %d of at most %d)",
                error.message,
                wait,
                tried + 1,
                policy.tries_for(error),
            )
        await asyncio.sleep(wait)
        count.value += 1
