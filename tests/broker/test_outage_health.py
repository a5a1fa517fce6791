"""`RedisHealth`, one function at a time, on a fake clock: when a call is let through to
Redis and when it is refused at once."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from service.broker.outage import Backoff, RedisHealth, RedisUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _refused() -> None:
    raise redis.exceptions.ConnectionError("Error 111 connecting")


async def _ok() -> str:
    return "PONG"


async def test_a_failure_marks_redis_down_and_calls_are_refused_until_the_next_probe() -> None:
    clock = Clock()
    health = RedisHealth(probe_seconds=1.0, clock=clock)
    calls: list[str] = []

    async def counted() -> str:
        calls.append("sent")
        return "PONG"

    with pytest.raises(RedisUnavailable):
        await health.call(_refused)
    assert not health.up and health.down_since is not None
    with pytest.raises(RedisUnavailable):
        await health.call(counted)  # refused without asking Redis
    assert calls == []

    clock.now += 1.0
    assert await health.call(counted) == "PONG"  # the probe goes through, and succeeds
    assert calls == ["sent"] and health.up


async def test_one_caller_gets_each_probe() -> None:
    clock = Clock()
    health = RedisHealth(probe_seconds=1.0, clock=clock)
    health.failed(OSError("gone"))
    clock.now += 1.5
    assert [health.may_try() for _ in range(3)] == [True, False, False]
    clock.now += 1.0
    assert health.may_try()


async def test_a_readiness_probe_always_asks() -> None:
    health = RedisHealth(probe_seconds=3600, clock=Clock())
    health.failed(OSError("gone"))
    assert await health.call(_ok, probe=True) == "PONG"
    assert health.up


async def test_a_call_past_the_timeout_counts_as_redis_away() -> None:
    health = RedisHealth(timeout=0.01)

    async def stuck() -> None:
        await asyncio.sleep(10)

    with pytest.raises(RedisUnavailable):
        await health.call(stuck)
    assert not health.up


async def test_a_command_error_is_not_an_outage() -> None:
    health = RedisHealth()

    async def bad_script() -> None:
        raise redis.exceptions.ResponseError("ERR Error running script")

    with pytest.raises(redis.exceptions.ResponseError):
        await health.call(bad_script)
    assert health.up


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    delays = [backoff.delay() for _ in range(5)]
    backoff.reset()
    assert [*delays, backoff.delay()] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.1]
