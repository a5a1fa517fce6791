"""Scheduler benchmark: 100,000 periodic tasks, an idle tick, then 10,000 slots due at once.

    .venv/bin/python -m bench.scheduler [--tasks 100000] [--due 10000] [--workers 2]
        [--upstream closed|fast] [--database-url postgresql://...] [--redis-url ...]
        [--worker-env BACKSYNC_NAME=VALUE] [--breakdown-rounds 5] [--py-spy DIR]

The target (issue): with 2 workers, 10,000 due slots are turned into runs and enqueued
at >= 5,000 runs per second, and no task gets two runs. PostgreSQL only (the claim is
`FOR UPDATE SKIP LOCKED`, the idle plan an `EXPLAIN (ANALYZE, BUFFERS)`).

1. creates a fresh database `backsync_bench_sched` and migrates it; inserts one tenant
   and `--tasks` tasks straight into it (SQLAlchemy Core, in batches), each with the
   schedule `0 0 29 2 *` (UTC: its next slot is years away, so only the slots this
   benchmark makes due ever fire) and `next_run_at` set as the API would; ANALYZE;
2. **idle tick**: `EXPLAIN (ANALYZE, BUFFERS)` of the scheduler's idle query
   (`SELECT min(next_run_at) FROM task`, the scheduler's own statement), and over
   `--idle-samples` executions each: the server's execution time (from EXPLAIN ANALYZE),
   the statement alone from this process (one autocommit connection), and the call as
   the scheduler makes it (a session: checkout, BEGIN, SELECT, ROLLBACK);
3. **dispatch**: starts `--workers` real workers (`python -m service worker`, as
   `bench.concurrency` does, each with its scheduler), waits until both schedulers and
   both queue pollers are subscribed, warms them up with `--warmup` slots of other
   tasks (waits up to `--warmup-drain` seconds for those runs to end), waits for the
   machine (`--quiet-wait`) and the workers to be idle; then, in one
   statement, sets `next_run_at = now()` for `--due` tasks, commits, and publishes on
   `<queue>:schedules` as the API does. From that commit it measures:
   - **runs created**: `count(*)` of `run` rows with trigger `schedule`, polled every
     `--poll-interval` (50 ms), until all exist;
   - **runs enqueued**: every enqueue (`Queue.enqueue_run`, `Queue.enqueue_runs`)
     publishes on the queue's doorbell channel, in the same Lua script that stored the
     jobs, how many it stored; this process subscribes to it and timestamps each
     message, so the time of the message carrying the N-th job is when the N-th run
     reached Redis (not quantised by the poll). The
     reconciler also enqueues (and rings) runs queued longer than
     `BACKSYNC_QUEUED_GRACE_SECONDS`: the workers get `--queued-grace` (600 s) so that
     only the schedulers ring during the measurement. Cross-check at the end: the
     queue's sorted set (jobs not yet finished) plus the runs no longer `queued` cover
     every run;
   - the CPU seconds of each worker, PostgreSQL, Redis, this process and the rest of the
     machine (`other`: another job, e.g. a CI run, disturbing the figures) over that span.
4. checks: every due task has exactly one run (`GROUP BY task_id HAVING count(*) > 1`
   is empty, over the whole table), none was skipped, no task is left due, and each
   moved to its next slot; then the idle tick again (the claimed tasks' old index
   entries are dead until vacuumed);
5. **breakdown** (`--breakdown-rounds`, workers stopped): one batch of `BATCH` slots
   in this process: `Scheduler.fire_due` whole, then its steps lapped (the service's own
   statements and functions), then the same steps with the slots moved by one UPDATE
   per task (executemany) instead of one `UPDATE ... FROM (VALUES ...)`: what limits
   a scheduler, and what the one statement buys;
6. prints the figures and writes `bench/scheduler-results.json`; stops the workers,
   drops the database and deletes the queue's Redis keys.

The workers execute the runs too: with `--upstream closed` (default) each task's URL is
a loopback port bound by this process but not listening, so a run's requests are refused
at once and tried again in place (seconds of sleeping), then the run fails
(`retry.max_attempts` 1, so no retry is scheduled): no upstream process competes for the
CPU, but each run's claim, connection attempts and failure still cost its worker some.
`--upstream fast` serves each task one page of one record from `bench.slow_upstream` with
no delay: the runs succeed, and executing them competes with the dispatch even more.
To see the schedulers with execution mostly out of the way, run with
`--worker-env BACKSYNC_WORKER_MAX_JOBS=1` (and a short `--warmup-drain`).

`--py-spy DIR` samples each worker's CPU (on-CPU stacks) during the dispatch and prints
where its time went (needs `py-spy` on PATH or in this venv).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil  # type: ignore[import-untyped, unused-ignore]
from redis.asyncio import Redis
from sqlalchemy import bindparam, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.concurrency import (
    _env_pair,
    _is_local,
    bench_settings,
    clean_redis,
    spread,
    start_py_spy,
    start_upstream,
    start_worker,
)
from bench.ingest import (
    BenchError,
    CpuMeter,
    _admin,
    add_server_arguments,
    code_version,
    cpu_seconds,
    machine,
    postgres_cpu_seconds,
    print_py_spy,
    run_and_write,
    server_version,
    stop_process,
    stop_py_spy,
    wait_quiet,
)
from bench.slow_upstream import task_path
from service.broker.queue import Queue, doorbell_channel, schedules_channel
from service.config import Settings
from service.db import create_engine, create_sessionmaker
from service.ids import new_id
from service.migrations import upgrade
from service.models import FINAL_STATUSES, metadata
from service.models.types import UTCDateTime, utcnow
from service.runs.scheduler import (
    _CLAIM,
    _SOONEST,
    BATCH,
    Scheduler,
    _Claimed,
    _live,
    _move,
    _move_all,
)
from service.runs.service import DueTask, start_scheduled
from service.tasks.schedule import next_run_at
from service.tasks.schemas import TaskIn

RESULTS = Path(__file__).resolve().parent / "scheduler-results.json"
BENCH_DB = "backsync_bench_sched"
TARGET_RUNS_PER_SECOND = 5_000
RARELY = {"cron": "0 0 29 2 *", "timezone": "UTC"}
"""29 February, midnight UTC: no slot falls due on its own during the benchmark."""
IDLE_SQL = "SELECT min(next_run_at) FROM task"
INDEX = "ix_task_next_run_at"
FIXED_LOOP = "import time;t=time.time();s=0\nfor i in range(10_000_000): s+=i\nprint(time.time()-t)"
"""The fixed-loop timing reported next to the figures: how loaded the machine was."""


# ---- setup --------------------------------------------------------------------------


def task_name(index: int) -> str:
    """Zero-padded, so that a range of indexes is a range of names."""
    return f"sched-{index:06d}"


def fixed_loop_seconds() -> float | None:
    """The fixed loop's time, in a fresh interpreter (the same for every benchmark run)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", FIXED_LOOP], capture_output=True, text=True, timeout=120
        )
        return round(float(done.stdout.strip()), 3)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def closed_port() -> tuple[socket.socket, str]:
    """A loopback port bound here but never listening: connections are refused at once,
    and no other process can take the port while the benchmark runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def task_template(url: str) -> dict[str, Any]:
    """The columns every task shares, as the API stores them (`tasks.service._apply`)."""
    body = TaskIn.model_validate(
        {
            "name": "template",
            "source": {"url": url, "records_path": "data", "primary_key": "id"},
            "schedule": RARELY,
            "retry": {"max_attempts": 1},
            "limits": {"timeout_seconds": 5, "max_pages": 5},
        }
    )
    assert body.schedule is not None
    return {
        "kind": body.kind,
        "source": body.source.model_dump(mode="json"),
        "schedule": body.schedule.model_dump(mode="json", exclude_none=True),
        "retry": body.retry.model_dump(mode="json"),
        "limits": body.limits.model_dump(mode="json"),
        "tags": [],
        "paused": False,
        "consecutive_failures": 0,
        "skipped_runs": 0,
        "record_seq": 0,
    }


async def register_tasks(
    engine: AsyncEngine, count: int, base: str, per_task_path: bool, chunk: int = 10_000
) -> dict[str, Any]:
    """One tenant and `count` tasks, inserted in batches (Core, insertmanyvalues), then
    ANALYZE. Every task gets the slot the API would compute (`next_run_at`)."""
    tenant_table, task_table = metadata.tables["tenant"], metadata.tables["task"]
    now = utcnow()
    tenant_id = new_id("ten")
    slot = next_run_at(RARELY, "any", now)  # a cron slot does not depend on the task
    shared = task_template(base + task_path(0) if per_task_path else base + "/items")
    started = time.perf_counter()
    async with engine.begin() as connection:
        await connection.execute(
            insert(tenant_table), [{"id": tenant_id, "name": "bench-scheduler", "created_at": now}]
        )
        for first in range(0, count, chunk):
            rows = []
            for index in range(first, min(count, first + chunk)):
                row = {
                    **shared,
                    "id": new_id("tsk"),
                    "tenant_id": tenant_id,
                    "name": task_name(index),
                    "next_run_at": slot,
                    "created_at": now,
                    "updated_at": now,
                }
                if per_task_path:
                    row["source"] = {**shared["source"], "url": base + task_path(index)}
                rows.append(row)
            await connection.execute(insert(task_table), rows)
    inserted = time.perf_counter() - started
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        started = time.perf_counter()
        await connection.execute(text("ANALYZE"))
        analyzed = time.perf_counter() - started
        size = (
            await connection.execute(
                text(
                    "SELECT pg_size_pretty(pg_total_relation_size('task')), "
                    f"pg_size_pretty(pg_relation_size('{INDEX}'))"
                )
            )
        ).one()
    return {
        "tasks": count,
        "insert_seconds": round(inserted, 3),
        "analyze_seconds": round(analyzed, 3),
        "tasks_per_second": round(count / inserted),
        "next_slot": slot.isoformat() if slot else None,
        "task_table_size": size[0],
        "index_size": size[1],
        "tenant_id": tenant_id,
    }


# ---- the idle tick ------------------------------------------------------------------


def _median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 4)


async def idle_tick(engine: AsyncEngine, samples: int) -> dict[str, Any]:
    """The scheduler's idle query: its plan, and its latency three ways (see above)."""
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        plan_rows = await connection.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {IDLE_SQL}"))
        plan = "\n".join(str(row[0]) for row in plan_rows)
        server, planning = [], []
        for _ in range(samples):
            raw = await connection.execute(
                text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {IDLE_SQL}")
            )
            document = raw.scalar_one()
            document = json.loads(document) if isinstance(document, str) else document
            server.append(float(document[0]["Execution Time"]) / 1000)
            planning.append(float(document[0]["Planning Time"]) / 1000)
        alone = []
        for _ in range(samples):
            started = time.perf_counter()
            (await connection.execute(_SOONEST)).scalar()
            alone.append(time.perf_counter() - started)
    sessionmaker = create_sessionmaker(engine)
    as_scheduler = []
    soonest = None
    for _ in range(samples):
        started = time.perf_counter()
        async with sessionmaker() as session:  # exactly what `Scheduler.tick` does
            soonest = (await session.execute(_SOONEST)).scalar()
        as_scheduler.append(time.perf_counter() - started)
    return {
        "sql": IDLE_SQL,
        "plan": plan,
        "uses_index": INDEX in plan and "Index" in plan and "Seq Scan" not in plan,
        "heap_fetches": [int(n) for n in re.findall(r"Heap Fetches: (\d+)", plan)],
        "buffers": re.findall(r"Buffers: ([^\n]+)", plan)[:1],
        "soonest": soonest.isoformat() if isinstance(soonest, datetime) else None,
        "samples": samples,
        "server_execution_ms_median": _median_ms(server),
        "server_planning_ms_median": _median_ms(planning),
        "statement_ms": spread([1000 * v for v in alone]),
        "statement_ms_median": _median_ms(alone),
        "scheduler_call_ms_median": _median_ms(as_scheduler),
        "scheduler_call_ms": spread([1000 * v for v in as_scheduler]),
    }


# ---- workers, Redis, CPU ------------------------------------------------------------


class Doorbells:
    """Counts the jobs announced on the queue's doorbell channel, each with the arrival
    time of its message: the enqueue script publishes how many jobs it has just stored
    (one for `Queue.enqueue_run`, a batch's for `Queue.enqueue_runs`)."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self._redis, self._channel = redis, channel
        self.times: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel)
        while (await pubsub.get_message(timeout=1.0)) is None:  # the subscribe reply
            pass
        self._task = asyncio.create_task(self._listen(pubsub))

    async def _listen(self, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                if message["type"] == "message":  # its data: how many jobs (b"": one)
                    at = time.perf_counter()
                    self.times.extend([at] * int(message["data"] or 1))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def wait_subscribed(
    redis: Redis, settings: Settings, workers: list[subprocess.Popen[bytes]], limit: float = 90
) -> float:
    """Until every worker's scheduler listens for schedule changes and every worker's
    queue poller for its doorbell (PUBSUB NUMSUB counts the subscribers)."""
    channels = [schedules_channel(settings.queue_name), doorbell_channel(settings.queue_name)]
    started = time.perf_counter()
    while True:
        counts = dict(await redis.pubsub_numsub(*channels))
        if all(int(counts.get(c.encode(), 0)) >= len(workers) for c in channels):
            return time.perf_counter() - started
        for number, worker in enumerate(workers, 1):
            if worker.poll() is not None:
                raise BenchError(f"worker {number} exited (code {worker.returncode}) at startup")
        if time.perf_counter() - started > limit:
            raise BenchError(f"workers not subscribed after {limit:.0f} s: {counts}")
        await asyncio.sleep(0.1)


def wait_workers_idle(pids: list[int], limit: float, below: float = 5.0) -> list[float]:
    """Until every worker uses less than `below` % of a core over a second."""
    processes = [psutil.Process(pid) for pid in pids]
    deadline = time.monotonic() + limit
    while True:
        for process in processes:
            process.cpu_percent(None)
        time.sleep(1.0)
        busy = [round(float(process.cpu_percent(None)), 1) for process in processes]
        if max(busy) < below or time.monotonic() >= deadline:
            return busy


def _local_host(url: str) -> bool:
    return (urlsplit(url).hostname or "localhost") in ("127.0.0.1", "localhost", "::1")


async def redis_pid(url: str) -> int | None:
    redis = Redis.from_url(url)
    try:
        return int((await redis.info("server"))["process_id"])
    except Exception:
        return None
    finally:
        await redis.aclose()


class Meter:
    """CPU seconds per worker, upstream (fast mode), PostgreSQL (local), Redis (local),
    this process and the rest of the machine; the shape `CpuMeter.delta` reads."""

    def __init__(
        self, workers: list[int], upstream: int | None, redis: int | None, local_pg: bool
    ) -> None:
        self.workers = [psutil.Process(pid) for pid in workers]
        self.upstream = psutil.Process(upstream) if upstream else None
        self.redis = psutil.Process(redis) if redis else None
        self.local_pg = local_pg

    def snapshot(self) -> dict[str, dict[int, float]]:
        snap = {f"worker {n}": cpu_seconds([p]) for n, p in enumerate(self.workers, 1)}
        if self.upstream is not None:
            snap["upstream"] = cpu_seconds([self.upstream])
        if self.redis is not None:
            snap["redis"] = cpu_seconds([self.redis])
        if self.local_pg:
            snap["postgres"] = postgres_cpu_seconds()
        snap["bench"] = cpu_seconds([psutil.Process()])
        system = psutil.cpu_times()
        snap["machine"] = {0: system.user + system.system + getattr(system, "softirq", 0.0)}
        return snap


# ---- the database side --------------------------------------------------------------


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar()


async def make_due(engine: AsyncEngine, where: str, **params: Any) -> tuple[int, float]:
    """`next_run_at = now()` for the matching tasks, one statement; returns how many and
    the time.time() right after the commit."""
    async with engine.begin() as connection:
        result = await connection.execute(
            text(f"UPDATE task SET next_run_at = now() WHERE {where}"),  # noqa: S608
            params,
        )
        count = result.rowcount
    return int(count), time.time()


async def wait_runs(
    engine: AsyncEngine,
    expected: int,
    workers: list[subprocess.Popen[bytes]],
    limit: float,
    final: bool,
) -> int:
    """Until `expected` scheduled runs exist (an error after `limit` seconds) and, with
    `final`, until they have ended (at most `limit` seconds: then it goes on). Returns
    how many had not ended."""
    query = text(
        "SELECT count(*), count(*) FILTER (WHERE status IN :final) FROM run "
        "WHERE trigger = 'schedule'"
    ).bindparams(bindparam("final", expanding=True))
    deadline = time.perf_counter() + limit
    while True:
        async with engine.connect() as connection:
            total, ended = (await connection.execute(query, {"final": list(FINAL_STATUSES)})).one()
        if total >= expected and (not final or ended >= expected):
            return int(total - ended)
        for number, worker in enumerate(workers, 1):
            if worker.poll() is not None:
                raise BenchError(f"worker {number} exited (code {worker.returncode})")
        if time.perf_counter() > deadline:
            if total >= expected:
                return int(total - ended)
            raise BenchError(f"{total} runs ({ended} ended) after {limit:.0f} s, want {expected}")
        await asyncio.sleep(0.2)


async def dispatch(
    args: argparse.Namespace,
    engine: AsyncEngine,
    redis: Redis,
    settings: Settings,
    workers: list[subprocess.Popen[bytes]],
    doorbells: Doorbells,
    meter: Meter,
    baseline_runs: int,
) -> dict[str, Any]:
    """Make `--due` slots due, wake the schedulers, and time runs created and enqueued."""
    count_sql = text("SELECT count(*) FROM run WHERE trigger = 'schedule'")
    spies: list[subprocess.Popen[bytes]] = []
    if args.py_spy:
        spies = [
            start_py_spy(w.pid, args.py_spy / f"worker-{n}", args.py_spy_rate)
            for n, w in enumerate(workers, 1)
        ]
    try:
        doorbells.times.clear()
        before = meter.snapshot()
        started = time.perf_counter()
        due, committed_at = await make_due(engine, "name < :edge", edge=task_name(args.due))
        t0 = time.perf_counter()
        update_seconds = t0 - started
        await redis.publish(schedules_channel(settings.queue_name), b"")
        timeline: list[tuple[float, int, int]] = []
        created_at: float | None = None
        deadline = t0 + args.timeout
        async with engine.connect() as connection:
            while True:
                runs = int((await connection.execute(count_sql)).scalar_one()) - baseline_runs
                await connection.rollback()  # a fresh snapshot for the next count
                at = time.perf_counter() - t0
                timeline.append((round(at, 3), runs, len(doorbells.times)))
                if created_at is None and runs >= due:
                    created_at = at
                if created_at is not None and len(doorbells.times) >= due:
                    break
                for number, worker in enumerate(workers, 1):
                    if worker.poll() is not None:
                        raise BenchError(f"worker {number} exited (code {worker.returncode})")
                if time.perf_counter() > deadline:
                    raise BenchError(
                        f"after {args.timeout:.0f} s: {runs} runs, {len(doorbells.times)} enqueued"
                    )
                await asyncio.sleep(args.poll_interval)
        ended = time.perf_counter() - t0
        cpu = CpuMeter.delta(before, meter.snapshot())
    finally:
        for spy in spies:
            stop_py_spy(spy)
    rings = sorted(t - t0 for t in doorbells.times)
    enqueued_at = rings[due - 1]

    def ring(fraction: float) -> float:
        return round(rings[max(0, int(fraction * due) - 1)], 3)

    middle = ring(0.9) - ring(0.1)
    return {
        "due": due,
        "update_seconds": round(update_seconds, 3),
        "committed_at": datetime.fromtimestamp(committed_at, UTC).isoformat(),
        "created_seconds": round(created_at or 0.0, 3),
        "enqueued_seconds": round(enqueued_at, 3),
        "first_enqueue_seconds": round(rings[0], 3),
        "enqueued_quantiles_seconds": {
            f"p{int(100 * f)}": ring(f) for f in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
        },
        "runs_per_second": round(due / enqueued_at, 1),
        "created_per_second": round(due / created_at, 1) if created_at else 0.0,
        "steady_runs_per_second": round(0.8 * due / middle, 1) if middle > 0 else 0.0,
        "doorbells": len(doorbells.times),
        "measured_seconds": round(ended, 3),
        "cpu_seconds": cpu,
        "cpu_share_of_a_core": {k: round(v / ended, 2) for k, v in cpu.items()},
        "worker_cpu_ms_per_run": round(
            1000 * sum(v for k, v in cpu.items() if k.startswith("worker")) / due, 3
        ),
        "timeline": timeline,
        "disturbed": cpu["other"] > 0.25 * ended,
    }


async def checks(
    engine: AsyncEngine, redis: Redis, settings: Settings, args: argparse.Namespace
) -> dict[str, Any]:
    """Exactly one run per due task, none skipped, none left due, every run in Redis."""
    edge = task_name(args.due)
    async with engine.connect() as connection:
        twice = (
            await connection.execute(
                text("SELECT task_id, count(*) FROM run GROUP BY task_id HAVING count(*) > 1")
            )
        ).all()
        per_due = (
            await connection.execute(
                text(
                    "SELECT count(*), count(DISTINCT r.task_id), "
                    "count(*) FILTER (WHERE r.status <> 'queued'), "
                    "min(r.created_at), max(r.created_at) "
                    "FROM run r JOIN task t ON t.id = r.task_id "
                    "WHERE t.name < :edge AND r.trigger = 'schedule'"
                ),
                {"edge": edge},
            )
        ).one()
        skipped = (await connection.execute(text("SELECT sum(skipped_runs) FROM task"))).scalar()
        still_due = (
            await connection.execute(text("SELECT count(*) FROM task WHERE next_run_at <= now()"))
        ).scalar()
        slots = (
            await connection.execute(
                text(
                    "SELECT next_run_at, count(*) FROM task WHERE name < :edge "
                    "GROUP BY next_run_at ORDER BY 2 DESC"
                ),
                {"edge": edge},
            )
        ).all()
    in_queue = int(await redis.zcard(settings.queue_name))
    runs, tasks, left_queued, first, last = per_due
    return {
        "tasks_with_two_runs": [[str(task), int(n)] for task, n in twice[:20]],
        "tasks_with_two_runs_count": len(twice),
        "runs_for_due_tasks": int(runs),
        "due_tasks_with_a_run": int(tasks),
        "skipped_runs": int(skipped or 0),
        "tasks_still_due": int(still_due or 0),
        "next_slots_of_due_tasks": {str(at): int(n) for at, n in slots[:5]},
        "jobs_in_queue_at_check": in_queue,
        "runs_no_longer_queued_at_check": int(left_queued),
        "first_run_created_at": first.isoformat() if first else None,
        "last_run_created_at": last.isoformat() if last else None,
    }


def problems_of(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    problems = []
    idle, check, dispatched = report["idle_tick"], report["checks"], report["dispatch"]
    if not idle["uses_index"]:
        problems.append(f"the idle query does not use {INDEX}:\n{idle['plan']}")
    if check["tasks_with_two_runs_count"]:
        problems.append(f"{check['tasks_with_two_runs_count']} task(s) got two or more runs")
    if check["runs_for_due_tasks"] != args.due or check["due_tasks_with_a_run"] != args.due:
        problems.append(
            f"{check['runs_for_due_tasks']} runs for {check['due_tasks_with_a_run']} due "
            f"tasks, expected {args.due} for {args.due}"
        )
    if dispatched["due"] != args.due:
        problems.append(f"the dispatch made {dispatched['due']} tasks due, not {args.due}")
    if check["skipped_runs"]:
        problems.append(f"{check['skipped_runs']} slot(s) skipped")
    if check["tasks_still_due"]:
        problems.append(f"{check['tasks_still_due']} task(s) still due after the dispatch")
    expected_slot = report["tasks"]["next_slot"]
    slots = check["next_slots_of_due_tasks"]
    if list(slots) != [str(datetime.fromisoformat(expected_slot))]:
        problems.append(f"due tasks' next slots: {slots}, expected all {expected_slot}")
    reached = check["jobs_in_queue_at_check"] + check["runs_no_longer_queued_at_check"]
    if reached < args.due:
        problems.append(f"only {reached} of {args.due} runs are in Redis or were picked up")
    if dispatched["doorbells"] != args.due:
        problems.append(f"{dispatched['doorbells']} enqueues rang, expected {args.due}")
    for line in report["worker_log_warnings"]:
        if "scheduler" in line:
            problems.append(f"worker log: {line}")
    return problems


def worker_log_warnings(paths: list[Path]) -> list[str]:
    """Distinct warning lines of the workers' logs about scheduling or enqueueing."""
    found: dict[str, None] = {}
    for path in paths:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if re.search(r"schedul|enqueue", line, re.IGNORECASE):
                    found[line.strip()[:300]] = None
    return list(found)[:20]


# ---- where a batch's time goes ------------------------------------------------------

_ALT_SLOTS = text(
    "UPDATE task SET next_run_at = :at, skipped_runs = skipped_runs + :skipped WHERE id = :id"
).bindparams(bindparam("at", type_=UTCDateTime()))
"""One UPDATE per task, sent as an executemany (asyncpg pipelines it): timed against the
service's one `UPDATE ... FROM (VALUES ...)` (`_move_all`)."""


class Laps:
    """Seconds per named step, summed over the rounds."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self._at = time.perf_counter()

    def start(self) -> None:
        self._at = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds.setdefault(name, []).append(now - self._at)
        self._at = now

    def table(self, per: int) -> list[dict[str, Any]]:
        return [
            {
                "step": name,
                "ms_per_batch": round(1000 * statistics.median(values), 2),
                "us_per_slot": round(1e6 * statistics.median(values) / per, 1),
            }
            for name, values in self.seconds.items()
        ]


async def _due_batch(engine: AsyncEngine, first: int) -> None:
    """Makes `BATCH` tasks (from index `first`, never dispatched) due; not timed."""
    await make_due(
        engine, "name >= :a AND name < :b", a=task_name(first), b=task_name(first + BATCH)
    )


async def _steps(sessionmaker: Any, queue: Queue, laps: Laps, slots: str) -> int:
    """One batch as `Scheduler.fire_due` does it (its statements and functions), lapped;
    `slots="executemany"` moves the slots with `_ALT_SLOTS` instead."""
    now = utcnow()
    laps.start()
    async with sessionmaker() as session:
        result = await session.execute(_CLAIM, {"now": now, "limit": BATCH})
        claimed = [_Claimed(*row) for row in result]
        laps.lap("claim: SELECT ... FOR UPDATE SKIP LOCKED")
        due = [DueTask(row.id, row.tenant_id, row.source) for row in claimed if _live(row)]
        laps.lap("DueTask per slot (run options)")
        started = await start_scheduled(session, due, now)
        laps.lap("start_scheduled: one INSERT ... VALUES (...) x N")
        moves = [_move(row, started, now) for row in claimed]
        laps.lap("next slot per task (_move; cron once per batch)")
        if slots == "executemany":
            params = [dict(zip(("id", "at", "skipped"), move, strict=True)) for move in moves]
            await session.execute(_ALT_SLOTS, params)
            laps.lap("[alternative] one UPDATE per task, executemany")
        else:
            await _move_all(session, moves)
            laps.lap("_move_all: one UPDATE ... FROM (VALUES ...)")
        await session.commit()
        laps.lap("commit")
    await queue.enqueue_runs(list(started.values()))
    laps.lap("enqueue_runs: one Lua script (+ doorbell)")
    if len(started) != BATCH:
        raise BenchError(f"breakdown: started {len(started)} runs, not {BATCH}")
    return len(started)


async def breakdown(
    engine: AsyncEngine, settings: Settings, first: int, rounds: int
) -> dict[str, Any]:
    """Where one scheduler batch (`BATCH` slots) spends its time, in this process with the
    workers stopped: `Scheduler.fire_due` whole, then step by step, then with the slots
    moved by one UPDATE per task (executemany). Each round uses tasks never dispatched,
    and commits (the rows stay)."""
    sessionmaker = create_sessionmaker(engine)
    scratch = settings.model_copy(update={"queue_name": f"{settings.queue_name}:breakdown"})
    queue = await Queue.connect(scratch)
    scheduler = Scheduler(sessionmaker, queue)
    whole, steps, many = Laps(), Laps(), Laps()
    try:
        for round_ in range(rounds):
            base = first + 3 * round_ * BATCH
            await _due_batch(engine, base)
            whole.start()
            if await scheduler.fire_due(utcnow()) != BATCH:
                raise BenchError("breakdown: fire_due did not take a whole batch")
            whole.lap("Scheduler.fire_due")
            await _due_batch(engine, base + BATCH)
            await _steps(sessionmaker, queue, steps, "service")
            await _due_batch(engine, base + 2 * BATCH)
            await _steps(sessionmaker, queue, many, "executemany")
    finally:
        await queue.close()
        with contextlib.suppress(Exception):
            await clean_redis(scratch)
    tables = {"whole": whole.table(BATCH), "service": steps.table(BATCH)}
    tables["executemany"] = many.table(BATCH)
    report: dict[str, Any] = {"batch": BATCH, "rounds": rounds}
    for key, table in tables.items():
        total = sum(step["ms_per_batch"] for step in table)
        report |= {
            key: table,
            f"{key}_ms_per_batch": round(total, 1),
            f"{key}_runs_per_second_one_scheduler": round(1000 * BATCH / total),
        }
    return report


# ---- report -------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    tasks, idle, dispatched = report["tasks"], report["idle_tick"], report["dispatch"]
    after = report["idle_tick_after_dispatch"]
    check, target = report["checks"], report["target"]
    loops = report["fixed_loop_seconds"]
    cpu = dispatched["cpu_seconds"]
    rows = [
        ("database", report["database"]),
        ("code", f"{report['code'].get('commit')} (+{report['code'].get('modified_files')} files)"),
        ("fixed loop (before / after)", f"{loops['before']} / {loops['after']} s"),
        (
            "tasks",
            f"{tasks['tasks']:,} inserted in {tasks['insert_seconds']:.1f} s "
            f"(table {tasks['task_table_size']}, {INDEX} {tasks['index_size']})",
        ),
        (
            "workers / max_jobs",
            f"{report['workers']} / {report['max_jobs']}  ({report['upstream']})",
        ),
        ("", ""),
        ("idle tick", f"{IDLE_SQL}: {'index' if idle['uses_index'] else 'NO INDEX'}"),
        (
            "  server execution (median)",
            f"{idle['server_execution_ms_median']:.3f} ms  "
            f"(planning {idle['server_planning_ms_median']:.3f} ms)",
        ),
        ("  statement round trip", f"{idle['statement_ms_median']:.3f} ms median"),
        ("  as the scheduler calls it", f"{idle['scheduler_call_ms_median']:.3f} ms median"),
        (
            "  after the dispatch",
            f"server {after['server_execution_ms_median']:.3f} ms, "
            f"scheduler call {after['scheduler_call_ms_median']:.3f} ms (median)",
        ),
        ("", ""),
        (
            "dispatch",
            f"{dispatched['due']:,} slots due (one UPDATE: {dispatched['update_seconds']} s)",
        ),
        (
            "  all runs created",
            f"{dispatched['created_seconds']:.3f} s after the commit "
            f"({dispatched['created_per_second']:,.0f} runs/s; polled every "
            f"{report['poll_interval'] * 1000:.0f} ms)",
        ),
        (
            "  all runs enqueued",
            f"{dispatched['enqueued_seconds']:.3f} s after the commit "
            f"({dispatched['runs_per_second']:,.0f} runs/s; first at "
            f"{dispatched['first_enqueue_seconds']:.3f} s)",
        ),
        (
            "  enqueued p10..p90",
            f"{dispatched['steady_runs_per_second']:,.0f} runs/s  "
            + " ".join(f"{k} {v}" for k, v in dispatched["enqueued_quantiles_seconds"].items()),
        ),
        ("  CPU s", "  ".join(f"{k} {v:.2f}" for k, v in cpu.items())),
        (
            "  share of a core",
            "  ".join(f"{k} {v:.2f}" for k, v in dispatched["cpu_share_of_a_core"].items()),
        ),
        ("  worker CPU per run", f"{dispatched['worker_cpu_ms_per_run']:.3f} ms"),
        ("", ""),
        (
            "tasks with two runs",
            f"{check['tasks_with_two_runs_count']} (runs for due tasks "
            f"{check['runs_for_due_tasks']:,}, distinct tasks {check['due_tasks_with_a_run']:,})",
        ),
        (
            "skipped / still due",
            f"{check['skipped_runs']} / {check['tasks_still_due']} "
            f"(next slots: {', '.join(check['next_slots_of_due_tasks'])})",
        ),
        ("", ""),
        (
            "runs enqueued per second",
            f"{target['measured']:,.0f} vs >= {target['target']:,}: "
            f"{100 * target['ratio']:.0f}% of target, {'met' if target['met'] else 'NOT met'}",
        ),
    ]
    print("\nidle tick plan (EXPLAIN (ANALYZE, BUFFERS), before the dispatch):")
    print("  " + idle["plan"].replace("\n", "\n  "))
    print("\nidle tick plan after the dispatch:")
    print("  " + after["plan"].replace("\n", "\n  "))
    print("\nBacksync scheduler benchmark")
    print("-" * 96)
    for label, value in rows:
        print(f"{label:<30}{value}")
    print("-" * 96)
    print_breakdown(report.get("breakdown"))


def print_breakdown(split: dict[str, Any] | None) -> None:
    if not split:
        return
    print(
        f"\none batch of {split['batch']} slots, step by step (this process, workers stopped, "
        f"median of {split['rounds']} rounds)"
    )
    titles = (
        ("Scheduler.fire_due, whole", "whole"),
        ("its steps", "service"),
        ("its steps, slots moved by one UPDATE per task (executemany)", "executemany"),
    )
    for title, key in titles:
        print(
            f"  {title}: {split[f'{key}_ms_per_batch']:.1f} ms per batch = "
            f"{split[f'{key}_runs_per_second_one_scheduler']:,} runs/s for one scheduler"
        )
        for step in split[key]:
            print(
                f"    {step['step']:<60}{step['ms_per_batch']:>9.2f} ms"
                f"{step['us_per_slot']:>9.1f} us/slot"
            )


# ---- main ---------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    loop_before = fixed_loop_seconds()
    tmpdir = Path(tempfile.mkdtemp(prefix="backsync-bench-sched-"))
    settings, admin_url = bench_settings(args, tmpdir, "sched")
    if admin_url is None:
        raise BenchError("the scheduler benchmark needs PostgreSQL")
    workers: list[subprocess.Popen[bytes]] = []
    logs = [tmpdir / f"worker-{n}.log" for n in range(1, args.workers + 1)]
    upstream: subprocess.Popen[str] | None = None
    refused: socket.socket | None = None
    engine: AsyncEngine | None = None
    redis = Redis.from_url(args.redis_url)
    doorbells = Doorbells(redis, doorbell_channel(settings.queue_name))
    try:
        await _admin(
            admin_url,
            f'DROP DATABASE IF EXISTS "{args.database_name}" WITH (FORCE)',
            f'CREATE DATABASE "{args.database_name}"',
        )
        await upgrade(settings.database_url)
        version = await server_version(settings.database_url)
        engine = create_engine(settings.database_url, pool_size=2, pre_ping=False)

        if args.upstream == "fast":
            upstream_args = argparse.Namespace(pages=1, page_size=1, latency=0.0)
            upstream, base = start_upstream(upstream_args)
        else:
            refused, base = closed_port()
        print(f"inserting {args.tasks:,} tasks ...", flush=True)
        registered = await register_tasks(engine, args.tasks, base, args.upstream == "fast")
        print(
            f"  {registered['insert_seconds']:.1f} s, "
            f"ANALYZE {registered['analyze_seconds']:.1f} s",
            flush=True,
        )

        print(f"idle tick: {args.idle_samples} executions ...", flush=True)
        idle = await idle_tick(engine, args.idle_samples)

        extra_env = {"BACKSYNC_QUEUED_GRACE_SECONDS": str(args.queued_grace), **args.worker_env}
        workers = [start_worker(settings, log, extra_env, None) for log in logs]
        await doorbells.start()
        subscribed = await wait_subscribed(redis, settings, workers)
        print(f"{len(workers)} workers subscribed after {subscribed:.1f} s", flush=True)
        meter = Meter(
            [w.pid for w in workers],
            upstream.pid if upstream else None,
            await redis_pid(args.redis_url) if _local_host(args.redis_url) else None,
            _is_local(admin_url),
        )
        warm_active = 0
        if args.warmup:
            print(f"warm-up: {args.warmup} slots of other tasks ...", flush=True)
            warm, _ = await make_due(
                engine, "name >= :edge", edge=task_name(args.tasks - args.warmup)
            )
            await redis.publish(schedules_channel(settings.queue_name), b"")
            await wait_runs(engine, warm, workers, args.timeout, final=False)
            warm_active = await wait_runs(engine, warm, workers, args.warmup_drain, final=True)
            if warm_active:
                print(f"  {warm_active} warm-up runs still active", flush=True)
        baseline = int(await scalar(engine, "SELECT count(*) FROM run WHERE trigger = 'schedule'"))
        if args.quiet_wait > 0:
            busy = wait_quiet(args.quiet_wait)
            if busy >= 20:
                print(f"  warning: machine still {busy:.0f}% busy", file=sys.stderr)
        idle_cpu = wait_workers_idle([w.pid for w in workers], 30)
        print(f"workers idle ({idle_cpu} % of a core); dispatching {args.due:,} slots ...")
        dispatched = await dispatch(
            args, engine, redis, settings, workers, doorbells, meter, baseline
        )
        print(f"  all enqueued after {dispatched['enqueued_seconds']:.3f} s", flush=True)
        checked = await checks(engine, redis, settings, args)
        after = await idle_tick(engine, args.idle_samples)
        for worker in workers:
            stop_process(worker)  # their schedulers would claim the breakdown's slots
        split = None
        if args.breakdown_rounds:
            print(f"breakdown: {args.breakdown_rounds} rounds of {BATCH} slots ...", flush=True)
            split = await breakdown(engine, settings, args.due, args.breakdown_rounds)
        loop_after = fixed_loop_seconds()

        measured = dispatched["runs_per_second"]
        report: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "database": version,
            "machine": machine(),
            "code": code_version(),
            "fixed_loop_seconds": {"before": loop_before, "after": loop_after},
            "workers": args.workers,
            "max_jobs": int(extra_env.get("BACKSYNC_WORKER_MAX_JOBS", settings.worker_max_jobs)),
            "scheduler_batch": BATCH,
            "worker_env": extra_env,
            "upstream": (
                "fast loopback upstream (bench.slow_upstream, no delay)"
                if args.upstream == "fast"
                else "closed loopback port (connections refused)"
            ),
            "schedule": RARELY,
            "poll_interval": args.poll_interval,
            "warmup_slots": args.warmup,
            "warmup_runs_active_at_dispatch": warm_active,
            "tasks": registered,
            "idle_tick": idle,
            "workers_idle_cpu_percent": idle_cpu,
            "dispatch": dispatched,
            "checks": checked,
            "idle_tick_after_dispatch": after,
            "breakdown": split,
            "worker_log_warnings": worker_log_warnings(logs),
            "target": {
                "target": TARGET_RUNS_PER_SECOND,
                "measured": measured,
                "ratio": round(measured / TARGET_RUNS_PER_SECOND, 3),
                "met": measured >= TARGET_RUNS_PER_SECOND,
            },
        }
        problems = problems_of(report, args)
        report["ok"] = not problems
        report["problems"] = problems
        print_report(report)
        if dispatched["disturbed"]:
            print("warning: other processes used the CPU meanwhile (see `other`)", file=sys.stderr)
        if args.py_spy:
            for number in range(1, len(workers) + 1):
                print_py_spy(
                    args.py_spy / f"worker-{number}" / "concurrency.txt", f"worker {number}"
                )
        return report
    except BaseException:
        for log in logs:
            if log.exists():
                tail = log.read_text(errors="replace")[-3000:]
                if tail.strip():
                    print(f"--- {log.name} (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        await doorbells.close()
        for worker in workers:
            stop_process(worker)
        stop_process(upstream)
        if refused is not None:
            refused.close()
        if engine is not None:
            await engine.dispose()
        with contextlib.suppress(Exception):
            await clean_redis(settings)
        await redis.aclose()
        with contextlib.suppress(Exception):
            await _admin(admin_url, f'DROP DATABASE IF EXISTS "{args.database_name}" WITH (FORCE)')
        shutil.rmtree(tmpdir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scheduler",
        description="The scheduler: idle tick over many tasks, then many slots due at once.",
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=10_000, help="slots made due at once")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--warmup",
        type=int,
        default=2 * BATCH,
        help="slots of other tasks fired (and their runs ended) before the measured dispatch",
    )
    parser.add_argument(
        "--warmup-drain",
        type=float,
        default=60,
        metavar="SECONDS",
        help="wait up to this long for the warm-up's runs to end",
    )
    parser.add_argument("--upstream", choices=("closed", "fast"), default="closed")
    add_server_arguments(parser, BENCH_DB)
    parser.add_argument("--idle-samples", type=int, default=300)
    parser.add_argument("--poll-interval", type=float, default=0.05, help="seconds")
    parser.add_argument("--timeout", type=float, default=300, help="seconds, per wait")
    parser.add_argument(
        "--queued-grace",
        type=float,
        default=600,
        help="the workers' BACKSYNC_QUEUED_GRACE_SECONDS (keeps the reconciler's re-sends "
        "out of the measurement)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        metavar="SECONDS",
        help="before the dispatch, wait up to this long for the machine to be idle (0: don't)",
    )
    parser.add_argument(
        "--worker-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="BACKSYNC_NAME=VALUE",
        help="a setting for the workers (repeatable)",
    )
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="sample the workers with py-spy (raw stacks)"
    )
    parser.add_argument("--py-spy-rate", type=int, default=100, help="samples per second")
    parser.add_argument(
        "--breakdown-rounds",
        type=int,
        default=5,
        help=f"after the dispatch, time a {BATCH}-slot batch step by step this many times, "
        "the service's way and batched (0: don't)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.tasks, args.due, args.workers, args.idle_samples) < 1 or args.warmup < 0:
        parser.error("--tasks, --due, --workers, --idle-samples must be >= 1, --warmup >= 0")
    if args.due + 3 * BATCH * args.breakdown_rounds + args.warmup > args.tasks:
        parser.error(f"--due + {3 * BATCH} * --breakdown-rounds + --warmup exceed --tasks")
    if args.database_url.startswith("sqlite"):
        parser.error("the scheduler benchmark needs PostgreSQL")
    if not args.database_name.startswith(BENCH_DB):
        parser.error(f"--database-name must start with {BENCH_DB} (it is dropped)")
    args.worker_env = dict(args.worker_env)
    return args


def main(argv: list[str] | None = None) -> int:
    report = run_and_write(parse_args(argv), bench)
    return 1 if report is None or report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
