"""The only module that imports arq.

Jobs carry nothing but ids, serialised with msgpack: arq's default pickle would let
anyone who can write to Redis run code in the worker. Job ids are deterministic
(`run:<id>`), so a run enqueued twice is one job; `keep_result=0` frees the id again
when the job ends.

Jobs are written by `_ENQUEUE`, a Lua script doing what arq's `enqueue_job` does (same
keys, same check), for any number of jobs and the doorbell in one round trip: arq's way
is WATCH, EXISTS, MULTI/EXEC per job, and the scheduler sends hundreds at once
(`bench/scheduler.py`: about 0.6 ms per job that way, 25 µs in one script).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgpack
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms, to_unix_ms
from arq.worker import Worker
from redis.asyncio import BlockingConnectionPool, Redis

from service.broker.channel import Subscription
from service.broker.outage import REDIS_DOWN, Backoff, RedisHealth
from service.config import Settings

log = logging.getLogger(__name__)

JobContext = dict[str, Any]


def _dumps(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, datetime=True, default=repr)
    return packed


def _loads(raw: bytes) -> Any:
    return msgpack.unpackb(raw, timestamp=3, raw=False)


_ENQUEUE = """
-- KEYS: the queue, then each job's job key and result key.
-- ARGV: score (ms), expiry (ms), doorbell channel ('' rings none), then each job's id
-- and serialised job. arq's enqueue_job, atomically per job: a job whose key or result
-- exists is not enqueued again.
local sent = 0
for i = 1, (#KEYS - 1) / 2 do
  if redis.call('EXISTS', KEYS[2 * i], KEYS[2 * i + 1]) == 0 then
    redis.call('PSETEX', KEYS[2 * i], ARGV[2], ARGV[3 + 2 * i])
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2 + 2 * i])
    sent = sent + 1
  end
end
if sent > 0 and ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], sent)
end
return sent
"""


_WAITING_TTL_SECONDS = 24 * 3600
"""A tenant's waiting set expires a day after its last waiting run was added: members
left behind by runs cancelled while they waited do not outlive it."""


def run_job_id(run_id: str, job_suffix: str | None = None) -> str:
    """The job id of a run (and of the reason for re-sending it): sending the same thing
    twice is one job."""
    return f"run:{run_id}" if job_suffix is None else f"run:{run_id}:{job_suffix}"


def redis_settings(url: str) -> RedisSettings:
    settings: RedisSettings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 3
    return settings


def redis_health(settings: Settings) -> RedisHealth:
    """How one process tells that Redis is away (`service.broker.outage`)."""
    return RedisHealth(
        timeout=settings.redis_timeout_seconds, probe_seconds=settings.redis_probe_seconds
    )


REDIS_CONNECTIONS = 256
"""Redis connections one process opens at most, or four per job slot
(`BACKSYNC_WORKER_MAX_JOBS`, 50 by default) if that is more: a run has at most one
command in flight, beside the worker's few subscriptions and arq's polls. A command that
finds them all busy waits for one within `BACKSYNC_REDIS_TIMEOUT_SECONDS`, like any Redis
call, and one that waits that long counts as Redis being unavailable (`broker.outage`)."""


def lazy_pool(settings: Settings) -> ArqRedis:
    """arq's connection pool, connecting on first use: unlike arq's `create_pool`, which
    pings Redis (and gives up after a few tries), building it needs no Redis, so the
    API starts, and serves reads, while Redis is away.

    redis-py's *blocking* pool, for how it hands out connections, not for the blocking:
    the plain `ConnectionPool` checks a connection for stray data while holding the
    pool's lock, and that check (a read with a zero timeout) lasts a whole turn of the
    event loop, so concurrent commands got their connections one loop turn apart. Under
    load that queue was the API's tail: a rate-limit top-up took 170 ms at p50 (380 ms
    at p99) against 5 ms now, and `GET /v1/runs/{id}`'s p99 fell from 95 to 17-22 ms
    (bench/api.py, bench/RESULTS.md "Session 11"). The blocking pool checks outside its
    lock."""
    if not settings.redis_url:
        raise RuntimeError("BACKSYNC_REDIS_URL is not set")
    connections = BlockingConnectionPool.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_seconds,
        max_connections=max(REDIS_CONNECTIONS, 4 * settings.worker_max_jobs),
        timeout=settings.redis_timeout_seconds,
    )
    return ArqRedis(
        connections,
        job_serializer=_dumps,
        job_deserializer=_loads,
        default_queue_name=settings.queue_name,
    )


class Queue:
    """What the API and the worker need from the queue: enqueue a run, ping.

    Every call goes through `health`: bounded by its timeout, and refused at once
    (`RedisUnavailable`) while Redis is known to be away. Callers treat a failed enqueue
    as delayed, not lost: the run is in the database, and the reconciler sends it.
    """

    def __init__(self, pool: ArqRedis, queue_name: str, health: RedisHealth | None = None):
        self._pool = pool
        self._queue_name = queue_name
        self._enqueue = pool.register_script(_ENQUEUE)
        self.health = health or RedisHealth()

    @classmethod
    def from_pool(cls, pool: ArqRedis, queue_name: str, health: RedisHealth | None = None) -> Queue:
        return cls(pool, queue_name, health)

    @classmethod
    async def connect(cls, settings: Settings) -> Queue:
        """The queue of `settings`; connects on first use (Redis may be away now)."""
        return cls(lazy_pool(settings), settings.queue_name, redis_health(settings))

    @property
    def redis(self) -> Redis:
        """The connection pool, for Backsync's own keys (`service.broker.rate_limit`)."""
        return self._pool

    async def enqueue_run(
        self, run_id: str, *, job_suffix: str | None = None, not_before: datetime | None = None
    ) -> bool:
        """Send a run to the workers: at `not_before`, or now with a doorbell ring; False
        when its job was there already (nothing sent)."""
        return await self._send([(run_job_id(run_id, job_suffix), run_id)], not_before) > 0

    async def enqueue_runs(self, run_ids: list[str]) -> int:
        """Send runs to the workers now, in one round trip; returns how many were not
        there already."""
        return await self._send([(run_job_id(run_id), run_id) for run_id in run_ids], None)

    async def _send(
        self, jobs: list[tuple[str, str]], not_before: datetime | None, function: str = "sync_run"
    ) -> int:
        """`function` jobs of one argument each, (job id, argument), as arq's
        `enqueue_job(_job_id=, _defer_until=)` writes them: its keys, score, expiry and
        payload; a deferred job rings no doorbell (it is not due yet). The doorbell's
        message is the number of jobs it announces."""
        if not jobs:
            return 0
        now = timestamp_ms()
        score = now if not_before is None else to_unix_ms(not_before)
        expires = score - now + self._pool.expires_extra_ms
        keys: list[str] = [self._queue_name]
        args: list[bytes | str | int] = [score, expires, ""]
        if not_before is None:
            args[2] = doorbell_channel(self._queue_name)
        for job_id, argument in jobs:
            keys += [job_key_prefix + job_id, result_key_prefix + job_id]
            args += [job_id, serialize_job(function, (argument,), {}, None, now, serializer=_dumps)]
        sent: int = await self.health.call(lambda: self._enqueue(keys=keys, args=args))
        return sent

    async def park_run(self, run_id: str, tenant_id: str, since: datetime, at: datetime) -> None:
        """A run that waits for its tenant's cap on running runs: in the tenant's waiting
        set (oldest `since` first), for `wake_waiting`, and sent again at `at` in case no
        wake comes (one of its tenant's runs ended while it was being parked, or a wake
        went to a run cancelled since). `at` is a point of a grid shared by every run
        (`service.runs.runner`), so the re-sends of one run collapse into one job."""
        await self._send([(run_job_id(run_id, f"wait:{to_unix_ms(at)}"), run_id)], at)
        key = self.waiting_key(tenant_id)

        async def add() -> None:
            async with self._pool.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {run_id: to_unix_ms(since)})
                pipe.expire(key, _WAITING_TTL_SECONDS)
                await pipe.execute()

        await self.health.call(add)

    async def unpark_run(self, run_id: str, tenant_id: str) -> None:
        """The run started after all: out of its tenant's waiting set (its deferred
        re-send finds it running and does nothing)."""
        await self.health.call(lambda: self._pool.zrem(self.waiting_key(tenant_id), run_id))

    async def wake_waiting(self, tenant_id: str) -> str | None:
        """One of the tenant's runs ended: send its oldest waiting run now; returns it."""
        key = self.waiting_key(tenant_id)
        popped = await self.health.call(lambda: self._pool.zpopmin(key, 1))
        if not popped:
            return None
        member = popped[0][0]
        run_id = member.decode() if isinstance(member, bytes) else str(member)
        await self._send([(run_job_id(run_id, f"wake:{timestamp_ms()}"), run_id)], None)
        return run_id

    def waiting_key(self, tenant_id: str) -> str:
        """The sorted set of a tenant's runs waiting for its cap (a hint: the database's
        `run.waiting_reason` is the truth, and each such run is re-sent on its own)."""
        return f"{self._queue_name}:waiting:{tenant_id}"

    async def enqueue_health_batch(self, batch_id: str, *, job_suffix: str | None = None) -> None:
        """Send a health batch to the workers (`service.health.jobs`); like runs, the job
        id derives from the batch and the reason for re-sending it, and the job is written
        by the same script (one round trip with its doorbell, where arq's `enqueue_job`
        and a publish took a watched pipeline and a second call)."""
        job_id = f"health:{batch_id}" if job_suffix is None else f"health:{batch_id}:{job_suffix}"
        await self._send([(job_id, batch_id)], None, function="ingest_health_batch")

    async def schedules_changed(self) -> None:
        """Wake every worker's scheduler: a task's next slot may be sooner now."""
        channel = schedules_channel(self._queue_name)
        await self.health.call(lambda: self._pool.publish(channel, b""))

    async def webhooks_due(self) -> None:
        """Wake the workers' webhook deliverers: events were written or a delivery made."""
        channel = webhooks_channel(self._queue_name)
        await self.health.call(lambda: self._pool.publish(channel, b""))

    async def ping(self) -> bool:
        """Whether Redis answers now (always asked, within the health's timeout)."""
        try:
            return bool(await self.health.call(self._pool.ping, probe=True))
        except REDIS_DOWN:
            return False

    async def close(self) -> None:
        await self._pool.aclose(close_connection_pool=True)


def schedules_channel(queue_name: str) -> str:
    """Published when a task's schedule changes (`service.runs.scheduler`)."""
    return f"{queue_name}:schedules"


def webhooks_channel(queue_name: str) -> str:
    """Published after a commit that wrote events or deliveries
    (`service.notifications.webhooks.deliverer`)."""
    return f"{queue_name}:webhooks"


def doorbell_channel(queue_name: str) -> str:
    """Rung on every enqueue: workers poll the queue at once instead of at their next
    poll (see `_Worker`)."""
    return f"{queue_name}:doorbell"


class _Worker(Worker):
    """arq's worker with a doorbell, minus two costs that grow with `max_jobs`.

    arq polls the queue every `poll_delay`, so a trigger waits half of it on average,
    and a short delay costs an idle worker CPU. Here every enqueue also rings a pub/sub
    doorbell, and the worker polls as soon as it rings, or, with every slot busy, as
    soon as one frees; `idle_poll` is only the fallback, for deferred retries and for
    rings lost while Redis was away.

    Each poll reads the queue from its head, where the jobs this worker is running still
    sit until they end, and arq asks Redis about each of them again (WATCH, EXISTS,
    ZSCORE) before skipping it: with 50 jobs running, about 150 round trips per poll.
    They are skipped here from what the worker knows itself.

    arq also starts jobs one after another, four Redis round trips each; when a wave of
    runs ends together, on a busy event loop, the last free slot waited for all the
    others. `START_LANES` walks share the slots (arq's own semaphore and counter) and
    start that many jobs at once.

    Losing Redis does not stop it (arq's own worker exits on the first error): it waits
    for Redis before starting, a poll that fails is tried again after a capped
    exponential backoff, and a job whose start or end could not be written is released
    (its in-progress key deleted) once Redis is back, so that a later poll takes it up
    again instead of after `job_timeout`; jobs tolerate running twice.
    """

    START_LANES = 8

    def __init__(self, *args: Any, idle_poll: float, health: RedisHealth, **kwargs: Any) -> None:
        super().__init__(*args, poll_delay=0, **kwargs)  # the waiting is `_wait_for_work`
        self._idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._doorbell: Subscription | None = None
        self._health = health
        self._backoff = Backoff()
        self._stranded: set[str] = set()
        """Jobs whose start or end Redis missed: released once it answers again."""

    async def main(self) -> None:
        while True:
            try:
                await self._health.call(self.pool.ping, probe=True)
                break
            except REDIS_DOWN:
                await self._backoff.sleep()
        self._backoff.reset()
        self.ctx["redis_health"] = self._health  # shared by the jobs' queue and budget
        await super().main()

    async def _poll_iteration(self) -> None:
        if self._doorbell is None:  # the pool exists from the first poll on
            self._doorbell = Subscription(
                self.pool, doorbell_channel(self.queue_name), self._ring, purpose="enqueues"
            )
            self._doorbell.start()
        try:
            await super()._poll_iteration()
            await self._release_stranded()
        except REDIS_DOWN as exc:
            self._health.failed(exc)
            await self._backoff.sleep()
            return
        self._health.answered()
        self._backoff.reset()
        await self._wait_for_work()

    async def _release_stranded(self) -> None:
        if self._stranded:
            stranded, self._stranded = self._stranded, set()
            try:
                await self.pool.delete(*[in_progress_key_prefix + job_id for job_id in stranded])
            except BaseException:
                self._stranded |= stranded
                raise
            log.info("released %d job(s) Redis missed the start or end of", len(stranded))

    def _ring(self, _data: bytes) -> None:
        self._wake.set()

    async def _wait_for_work(self) -> None:
        """Until there may be something to start, at most `idle_poll`: the doorbell rang
        or a job ended (both may have happened during the poll). A job's end counts even
        with slots free: the poll asked for no more jobs than it had free slots, so it
        may have left some behind, and they were enqueued (and rang) before it. With
        every slot busy, only a freed slot ends the wait."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._idle_poll):
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    if self.job_counter < self.max_jobs:
                        return

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except REDIS_DOWN:
            # The database has the run's state; Redis only lost track of the job.
            log.warning("job %s: Redis is unavailable; released once it is back", job_id)
            self._stranded.add(job_id)
        finally:
            # `set` runs before arq's done-callback frees the slot, but the waiter it
            # wakes is queued behind that callback: the poll then sees the free slot.
            asyncio.get_running_loop().call_soon(self._wake.set)

    async def close(self) -> None:
        if self._doorbell is not None:
            await self._doorbell.close()
            self._doorbell = None
        try:
            await super().close()
        except REDIS_DOWN:  # arq's close deletes its health key first: shut down without it
            if self.on_shutdown is not None:
                await self.on_shutdown(self.ctx)
            await self.pool.aclose(close_connection_pool=True)
            self._pool = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        running = self.tasks
        waiting = [
            job_id
            for job_id in job_ids
            if (task := running.get(job_id.decode())) is None or task.done()
        ]
        lanes = min(self.START_LANES, len(waiting))
        if lanes <= 1:
            await self._start_each(waiting)
            return
        results = await asyncio.gather(
            *(self._start_each(waiting[lane::lanes]) for lane in range(lanes)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _start_each(self, job_ids: list[bytes]) -> None:
        """arq's `start_jobs`, one job at a time: when Redis fails a job's start, arq has
        taken a slot (its counter and semaphore) for it and no task will free it, so the
        slot is given back here; otherwise each failed poll would lose one."""
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except REDIS_DOWN:  # only its Redis pipeline fails so, after the slot is taken
                self.job_counter -= 1
                self.sem.release()
                raise


def build_worker(
    settings: Settings,
    functions: list[Callable[..., Awaitable[Any]]],
    on_startup: Callable[[JobContext], Awaitable[None]],
    on_shutdown: Callable[[JobContext], Awaitable[None]],
    *,
    burst: bool = False,
    handle_signals: bool = True,
) -> Worker:
    """An arq worker for Backsync's jobs.

    A trigger reaches a free worker at once (its doorbell); without a ring the worker
    polls every `worker_poll_delay`, 100 ms by default (arq's 0.5 s would delay deferred
    retries, and each poll is one cheap ZRANGEBYSCORE).
    """
    if not settings.redis_url:
        raise RuntimeError("BACKSYNC_REDIS_URL is not set")
    return _Worker(
        functions=functions,
        queue_name=settings.queue_name,
        redis_pool=lazy_pool(settings),
        health=redis_health(settings),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        burst=burst,
        handle_signals=handle_signals,
        max_jobs=settings.worker_max_jobs,
        job_timeout=settings.job_timeout_seconds,
        keep_result=0,
        idle_poll=settings.worker_poll_delay,
        max_tries=1_000,
        job_serializer=_dumps,
        job_deserializer=_loads,
    )
