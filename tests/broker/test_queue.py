"""The queue writes jobs with its own script (one round trip for a whole batch), so these
tests hold it to arq: a real arq worker runs what it enqueued, each job id once, and a
job id is deduplicated against arq's own `enqueue_job` both ways, as arq dedupes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq import create_pool
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus
from arq.utils import to_unix_ms
from redis.asyncio import Redis

from service.broker.queue import (
    Queue,
    _loads,
    build_worker,
    doorbell_channel,
    lazy_pool,
    redis_settings,
    run_job_id,
)
from service.config import Settings
from service.models.types import utcnow
from service.runs.runner import recheck_at


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[ArqRedis]:
    """An arq pool on the test's queue: the service's `Queue` and arq's own enqueue
    side by side."""
    arq_pool = await create_pool(
        redis_settings(settings.redis_url or ""), default_queue_name=settings.queue_name
    )
    try:
        yield arq_pool
    finally:
        await arq_pool.aclose()


def ids(settings: Settings, *names: str) -> list[str]:
    """Run ids of this test's own: arq's job and result keys are not per queue, and
    another run of the suite may have left `arq:result:run:a` in a shared Redis."""
    unique = settings.queue_name.rsplit(":", 1)[-1]
    return [f"{name}-{unique}" for name in names]


async def sync_run(ctx: dict[str, Any], run_id: str) -> None:
    """Stands in for the service's job (arq finds a job's function by this name)."""
    ctx["calls"].append(run_id)


async def ingest_health_batch(ctx: dict[str, Any], batch_id: str) -> None:
    """Stands in for the health job, as `sync_run` does for runs."""
    ctx["calls"].append(f"health {batch_id}")


async def _calls(ctx: dict[str, Any]) -> None:
    ctx["calls"] = []


async def _nothing(_ctx: dict[str, Any]) -> None:
    return None


async def _run_burst(settings: Settings) -> list[str]:
    """Runs every queued job on a real arq worker (`build_worker`, burst mode); returns
    the run ids its `sync_run` was called with."""
    jobs: list[Callable[..., Awaitable[Any]]] = [sync_run, ingest_health_batch]
    worker = build_worker(settings, jobs, _calls, _nothing, burst=True, handle_signals=False)
    try:
        await asyncio.wait_for(worker.async_run(), timeout=20)
        calls: list[str] = worker.ctx["calls"]
    finally:
        await worker.close()
    return calls


async def test_a_batch_is_run_by_an_arq_worker_each_job_once(
    settings: Settings, pool: ArqRedis
) -> None:
    queue = Queue.from_pool(pool, settings.queue_name)
    runs = ids(settings, *(f"run_{i:03d}" for i in range(50)))
    (new,) = ids(settings, "run_new")

    assert await queue.enqueue_runs(runs) == 50
    assert await queue.enqueue_runs([*runs[:10], new]) == 1  # the same job ids
    await queue.enqueue_run(runs[0])  # as the API and the reconciler send: still one job

    assert sorted(await _run_burst(settings)) == sorted([*runs, new])
    # keep_result=0: a finished job frees its id, so the run can be sent again.
    assert await queue.enqueue_runs(runs[:1]) == 1


async def test_a_health_batch_is_one_job_however_often_it_is_sent(
    settings: Settings, pool: ArqRedis
) -> None:
    """Health batches go through the runs' script too: the API's send and the
    reconciler's re-send of one batch are one job, run by an arq worker with the batch."""
    queue = Queue.from_pool(pool, settings.queue_name)
    (batch,) = ids(settings, "hb_1")

    await queue.enqueue_health_batch(batch)
    await queue.enqueue_health_batch(batch)  # the same job id
    job = Job(f"health:{batch}", pool, _queue_name=settings.queue_name, _deserializer=_loads)
    info = await job.info()
    assert info is not None
    assert (info.function, list(info.args)) == ("ingest_health_batch", [batch])
    await queue.enqueue_health_batch(batch, job_suffix="resend:1")  # another reason: a job

    assert await _run_burst(settings) == [f"health {batch}"] * 2


async def test_a_job_id_is_deduplicated_against_arqs_own_enqueue_both_ways(
    settings: Settings, pool: ArqRedis
) -> None:
    queue = Queue.from_pool(pool, settings.queue_name)
    a, b, c = ids(settings, "a", "b", "c")

    assert await pool.enqueue_job("sync_run", a, _job_id=run_job_id(a)) is not None
    assert await queue.enqueue_runs([a]) == 0

    assert await queue.enqueue_runs([b]) == 1
    assert await pool.enqueue_job("sync_run", b, _job_id=run_job_id(b)) is None
    job = Job(run_job_id(b), pool, _queue_name=settings.queue_name, _deserializer=_loads)
    assert await job.status() == JobStatus.queued
    info = await job.info()
    assert info is not None
    assert (info.function, list(info.args), info.kwargs) == ("sync_run", [b], {})
    assert info.job_try is None  # arq's enqueue_job without _job_try stores none

    # A job whose result arq still keeps is not enqueued again either.
    await pool.set(result_key_prefix + run_job_id(c), b"x", ex=60)
    assert await queue.enqueue_runs([c]) == 0


async def test_the_doorbell_announces_how_many_jobs_and_a_deferred_job_rings_none(
    settings: Settings, pool: ArqRedis
) -> None:
    queue = Queue.from_pool(pool, settings.queue_name)
    deferred, x, y, z = ids(settings, "deferred", "x", "y", "z")
    redis = Redis.from_url(settings.redis_url or "")
    pubsub = redis.pubsub()
    await pubsub.subscribe(doorbell_channel(settings.queue_name))
    try:
        await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        later = utcnow() + timedelta(hours=1)

        await queue.enqueue_run(deferred, not_before=later)
        await queue.enqueue_runs([x, y, z])
        await queue.enqueue_runs([x])  # nothing new: no ring

        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        assert message is not None and message["data"] == b"3"
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    finally:
        await pubsub.aclose()
        await redis.aclose()

    score = await pool.zscore(settings.queue_name, run_job_id(deferred))
    assert score == to_unix_ms(later)  # arq's rounding
    job = Job(run_job_id(deferred), pool, _queue_name=settings.queue_name, _deserializer=_loads)
    assert await job.status() == JobStatus.deferred
    expiry = timedelta(milliseconds=await pool.pttl(job_key_prefix + run_job_id(deferred)))
    assert timedelta(hours=24, minutes=59) < expiry <= timedelta(hours=25)  # as arq: + 1 day


async def test_waiting_runs_are_woken_oldest_first_and_their_re_sends_collapse(
    settings: Settings, pool: ArqRedis
) -> None:
    """A run parked twice for the same recheck point is one deferred job; a wake sends
    the tenant's oldest waiting run now, once, and then the next."""
    queue = Queue.from_pool(pool, settings.queue_name)
    old, new = ids(settings, "old", "new")
    now = utcnow()
    at = recheck_at(now)

    await queue.park_run(new, "ten_1", now, at)
    await queue.park_run(old, "ten_1", now - timedelta(minutes=1), at)
    await queue.park_run(new, "ten_1", now, at)  # parked again before its recheck: one job

    deferred = await pool.zrange(settings.queue_name, 0, -1, withscores=True)
    assert sorted((job.decode(), score) for job, score in deferred) == sorted(
        (run_job_id(run, f"wait:{to_unix_ms(at)}"), to_unix_ms(at)) for run in (old, new)
    )
    assert await queue.wake_waiting("ten_2") is None  # another tenant waits for nothing
    assert await queue.wake_waiting("ten_1") == old
    assert await queue.wake_waiting("ten_1") == new
    assert await queue.wake_waiting("ten_1") is None
    woken = await pool.zrangebyscore(settings.queue_name, 0, to_unix_ms(utcnow()))
    assert sorted(job.decode().rsplit(":", 1)[0] for job in woken) == sorted(
        f"run:{run}:wake" for run in (old, new)
    )


def test_rechecks_fall_on_a_grid_after_now() -> None:
    """Whenever it is parked, a run's next recheck is the next grid point (so re-sends
    from different jobs meet), never now or in the past."""
    now = datetime(2026, 12, 4, 19, 0, 3, 500_000, tzinfo=UTC)

    assert recheck_at(now, every=10) == datetime(2026, 12, 4, 19, 0, 10, tzinfo=UTC)
    assert recheck_at(now.replace(second=9, microsecond=999_000), every=10) == recheck_at(
        now, every=10
    )
    assert recheck_at(now.replace(second=10, microsecond=0), every=10) == datetime(
        2026, 12, 4, 19, 0, 20, tzinfo=UTC
    )


async def test_concurrent_commands_get_their_connections_in_the_same_loop_turn(
    settings: Settings,
) -> None:
    """The process's pool hands out connections to concurrent commands together. The
    plain redis-py pool checked each reused connection under its lock with a read that
    lasts a loop turn, so 40 commands got theirs three turns apart each, 117 turns from
    the first to the last: under load, the API's tail latency (bench/api.py). Counted in
    event-loop turns, not time."""
    pool = lazy_pool(settings)
    connections = pool.connection_pool
    turn = 0
    handed_out: list[int] = []

    def tick() -> None:
        nonlocal turn
        turn += 1
        ticking.append(asyncio.get_running_loop().call_soon(tick))

    async def get_connection(*args: Any, **kwargs: Any) -> Any:
        connection = await original(*args, **kwargs)
        handed_out.append(turn)
        return connection

    try:
        held = [await connections.get_connection() for _ in range(40)]
        for connection in held:  # 40 idle, connected connections, whatever the pool
            await connections.release(connection)
        assert len(connections._available_connections) == 40
        original = connections.get_connection
        connections.get_connection = get_connection
        ticking = [asyncio.get_running_loop().call_soon(tick)]
        assert await asyncio.gather(*(pool.ping() for _ in range(40))) == [True] * 40
        ticking[-1].cancel()
    finally:
        await pool.aclose()

    assert len(handed_out) == 40
    assert max(handed_out) - min(handed_out) <= 2
