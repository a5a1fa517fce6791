"""How long to wait before the next attempt: the task's policy, or the upstream's
`Retry-After` when that is longer. (A request retried in place: `request_retry`.)"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from service.sync.spec import Retry


def backoff_delay(policy: Retry, failed_attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before attempt `failed_attempt + 1`.

    Exponential uses full jitter (uniform in [0, cap]) so many tasks failing together do
    not retry in lockstep; linear grows by `initial_delay_seconds` per attempt.
    """
    if policy.backoff == "linear":
        return min(policy.max_delay_seconds, policy.initial_delay_seconds * failed_attempt)
    return full_jitter(policy.initial_delay_seconds, policy.max_delay_seconds, failed_attempt, rng)


def full_jitter(initial: float, cap: float, failed: int, rng: random.Random | None = None) -> float:
    """Uniform in [0, min(cap, initial * 2^(failed-1))]: exponential backoff, full jitter."""
    return (rng or random).uniform(0, min(cap, initial * 2 ** (failed - 1)))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from now named by a `Retry-After` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def next_delay(policy: Retry, failed_attempt: int, retry_after: float | None) -> float:
    delay = backoff_delay(policy, failed_attempt)
    return max(delay, retry_after) if retry_after is not None else delay
