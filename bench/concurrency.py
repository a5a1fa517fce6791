"""Concurrency benchmark: many tasks against a slow upstream, one worker process.

    .venv/bin/python -m bench.concurrency [--tasks 500] [--max-jobs 50] [--pages 3]
        [--page-size 100] [--latency 0.2] [--database-url postgresql://...] [--redis-url ...]
        [--worker-env BACKSYNC_NAME=VALUE] [--count] [--what-if NAME] [--py-spy DIR]

The target (issue): 500 tasks, 200 ms per page, one worker: the wall time from the
first trigger to the last run's end within 1.5x of the ideal for the worker's
`max_jobs`, which is `ceil(tasks / max_jobs) * pages * latency` (a job walks its pages
in turn; the worker runs `max_jobs` jobs at once).

1. creates a fresh database `backsync_bench_conc` (PostgreSQL; a temp file for any
   `sqlite://` URL) and migrates it;
2. starts `bench.slow_upstream` in its own process (`--pages` pages of `--page-size`
   records per task path, each answered after `--latency` seconds);
3. starts one worker (`python -m service worker`, `BACKSYNC_WORKER_MAX_JOBS=--max-jobs`,
   its own queue and Redis key prefix) and samples its RSS every 50 ms;
4. registers the tasks through the real API (in this process), warms the worker up,
   then triggers every task (timed on its own) and polls the database every 250 ms
   (one GROUP BY) until every run is final;
5. checks every run succeeded with the right counts, the table holds every record, and
   the upstream saw exactly `tasks * pages` requests (no page fetched twice); prints the
   figures and writes `bench/concurrency-results.json` (exit 1 on any problem; the
   ratio alone fails it only with `--fail-over-target`);
6. stops the processes, drops the database, deletes its Redis keys.

Besides wall / ideal it reports where the time went: queue wait and run duration
spreads, runs running and upstream requests in flight over time (mean and timeline),
the worker's CPU seconds (per run, and as a share of one core: near 100% means the
worker, not the upstream, sets the pace), the other processes' CPU (`other` high means
another job disturbed the figures) and Redis commands per run.

Measuring a change without making it: `--worker-env BACKSYNC_X=Y` (repeatable) passes a
setting to the worker; `--count` runs the worker under `bench.conc_worker`, which counts
its engine's connections, checkouts and statements and its event loop's lag;
`--what-if NAME` (implies `--count`) applies one of that module's what-ifs;
`--py-spy DIR` samples the worker's CPU during the measured span.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from cryptography.fernet import Fernet
from redis.asyncio import Redis
from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.ingest import (
    BenchError,
    CpuMeter,
    RssSampler,
    _admin,
    _mib,
    add_server_arguments,
    bench_database,
    code_version,
    cursor_source,
    machine,
    print_py_spy,
    run_and_write,
    server_version,
    stop_process,
    stop_py_spy,
    wait_quiet,
    wait_warmup,
    worker_env,
)
from bench.slow_upstream import RESET_PATH, STATS_PATH, task_path
from service.app import create_app
from service.cli import _create_key
from service.config import Settings
from service.db import create_engine
from service.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "concurrency-results.json"
BENCH_DB = "backsync_bench_conc"
TARGET_RATIO = 1.5
FINAL = ("succeeded", "failed", "cancelled")


# ---- processes ----------------------------------------------------------------------


def start_upstream(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "bench.slow_upstream", "--pages", str(args.pages)]
    argv += ["--page-size", str(args.page_size), "--latency", str(args.latency)]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until READY (or EOF if it died)
    if not line.startswith("READY "):
        process.kill()
        raise BenchError(f"upstream did not start: {line!r}")
    return process, f"http://127.0.0.1:{int(line.split()[1])}"


WHAT_IFS = {
    "no-pre-ping": {"BENCH_PRE_PING": "0"},
    "uvloop": {"BENCH_UVLOOP": "1"},
    "no-budget": {"BENCH_NO_BUDGET": "1"},
    "gc-freeze": {"BENCH_GC": "freeze"},
}
"""Applied by `bench.conc_worker`; `pool=N` (the worker engine's pool_size) too."""


def what_if_env(names: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in names:
        if name.startswith("pool="):
            env["BENCH_POOL"] = str(int(name.removeprefix("pool=")))
        else:
            env.update(WHAT_IFS[name])
    return env


def start_worker(
    settings: Settings, log_path: Path, extra_env: dict[str, str], counts_out: Path | None
) -> subprocess.Popen[bytes]:
    """`python -m service worker`; with `counts_out`, `bench.conc_worker` (the same worker,
    counting what its engine does, plus any what-ifs in `extra_env`)."""
    env = worker_env(settings) | extra_env
    argv = [sys.executable, "-m", "service", "worker"]
    if counts_out is not None:
        env["BENCH_COUNTS_OUT"] = str(counts_out)
        argv = [sys.executable, "-m", "bench.conc_worker"]
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


async def redis_commands(url: str) -> int:
    """The Redis server's `total_commands_processed` (server-wide)."""
    redis = Redis.from_url(url)
    try:
        return int((await redis.info("stats"))["total_commands_processed"])
    finally:
        await redis.aclose()


def start_py_spy(pid: int, directory: Path, rate: int) -> subprocess.Popen[bytes]:
    """`py-spy record` on the worker, on-CPU samples only (`bench.ingest`'s helper samples
    idle threads at 500 Hz: on a small machine that load skews this benchmark)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    argv = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking"]
    argv += ["--format", "raw", "--output", str(directory / "concurrency.txt")]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let it attach before the runs start
    return process


async def clean_redis(settings: Settings) -> None:
    """The bench queue, its jobs (if any are left) and the bench's budget keys."""
    redis = Redis.from_url(settings.redis_url or "")
    try:
        job_ids = [raw.decode() for raw in await redis.zrange(settings.queue_name, 0, -1)]
        keys = [settings.queue_name, f"{settings.queue_name}:health-check"]
        for job_id in job_ids:
            keys += [f"arq:{kind}:{job_id}" for kind in ("job", "retry", "in-progress", "result")]
        keys += [key async for key in redis.scan_iter(f"{settings.redis_key_prefix}:*")]
        await redis.delete(*keys)
    finally:
        await redis.aclose()


# ---- the API side -------------------------------------------------------------------


async def in_batches(count: int, concurrency: int, make: Any) -> list[Any]:
    """`make(i)` for i in range(count), at most `concurrency` at once, results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Any:
        async with gate:
            return await make(index)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def task_body(index: int, base: str, pages: int) -> dict[str, Any]:
    return {
        "name": f"conc-{index:05d}",
        "source": cursor_source(f"{base}{task_path(index)}"),
        "limits": {"max_pages": pages + 5, "timeout_seconds": 30},
    }


async def register(
    client: httpx.AsyncClient, auth: dict[str, str], args: argparse.Namespace, base: str
) -> list[str]:
    async def make(index: int) -> str:
        body = task_body(index, base, args.pages)
        response = await client.post("/v1/tasks", json=body, headers=auth)
        if response.status_code != 201:
            raise BenchError(f"register {index}: {response.status_code} {response.text}")
        return str(response.json()["id"])

    return await in_batches(args.tasks, args.api_concurrency, make)


async def trigger_all(
    client: httpx.AsyncClient, auth: dict[str, str], task_ids: list[str], concurrency: int
) -> list[str]:
    async def make(index: int) -> str:
        response = await client.post(f"/v1/tasks/{task_ids[index]}/runs", headers=auth)
        if response.status_code != 202:
            raise BenchError(f"trigger {index}: {response.status_code} {response.text}")
        return str(response.json()["id"])

    return await in_batches(len(task_ids), concurrency, make)


# ---- the database side --------------------------------------------------------------


async def wait_final(
    engine: AsyncEngine,
    run_ids: list[str],
    worker: subprocess.Popen[bytes],
    interval: float,
    limit_seconds: float,
) -> dict[str, int]:
    """Poll the runs' statuses (one GROUP BY) until every run is final."""
    query = text("SELECT status, count(*) FROM run WHERE id IN :ids GROUP BY status")
    query = query.bindparams(bindparam("ids", expanding=True))
    deadline = time.perf_counter() + limit_seconds
    while True:
        async with engine.connect() as connection:
            rows = (await connection.execute(query, {"ids": run_ids})).all()
        counts = {str(status): int(n) for status, n in rows}
        if sum(counts.get(status, 0) for status in FINAL) >= len(run_ids):
            return counts
        if worker.poll() is not None:
            raise BenchError(f"the worker exited (code {worker.returncode}); runs: {counts}")
        if time.perf_counter() > deadline:
            raise BenchError(f"runs not final after {limit_seconds:.0f} s: {counts}")
        await asyncio.sleep(interval)


async def read_runs(engine: AsyncEngine, run_ids: list[str]) -> list[dict[str, Any]]:
    query = text(
        "SELECT id, status, attempt, created_at, started_at, finished_at, pages, requests, "
        "records_seen, inserted, updated, unchanged, rejected, error FROM run WHERE id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    async with engine.connect() as connection:
        rows = (await connection.execute(query, {"ids": run_ids})).mappings().all()
    return [dict(row) for row in rows]


async def count_records(engine: AsyncEngine, task_ids: list[str]) -> int:
    query = text("SELECT count(*) FROM record WHERE task_id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    async with engine.connect() as connection:
        return int((await connection.execute(query, {"ids": task_ids})).scalar_one())


def _epoch(value: Any) -> float | None:
    """A timestamp column as epoch seconds (SQLite hands back text, naive = UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


# ---- figures ------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {
        "min": round(ordered[0], 3),
        "p50": pct(0.5),
        "p95": pct(0.95),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


def occupancy(
    spans: list[tuple[float, float]], start: float, end: float, bucket: float
) -> list[float]:
    """Mean number of spans open per `bucket` seconds from `start` to `end`."""
    count = max(1, math.ceil((end - start) / bucket))
    busy = [0.0] * count
    for begin, finish in spans:
        for i in range(max(0, int((begin - start) / bucket)), count):
            low, high = start + i * bucket, start + (i + 1) * bucket
            if low >= finish:
                break
            busy[i] += max(0.0, min(high, finish) - max(low, begin))
    return [round(b / bucket, 1) for b in busy]


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(b, 1) for b, _ in spans] + [(f, -1) for _, f in spans])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def figures(
    args: argparse.Namespace,
    t0: float,
    runs: list[dict[str, Any]],
    seen: dict[str, Any],
) -> dict[str, Any]:
    created = [_epoch(r["created_at"]) or t0 for r in runs]
    started = [_epoch(r["started_at"]) for r in runs]
    finished = [_epoch(r["finished_at"]) for r in runs]
    spans = [(s, f) for s, f in zip(started, finished, strict=True) if s and f]
    last = max((f for f in finished if f), default=t0)
    per_run = args.pages * args.latency
    durations = [f - s for s, f in spans]
    up_spans = [(float(a), float(d)) for a, d in seen["spans"]]
    bucket = max(0.25, per_run / 2)
    return {
        "wall_seconds": round(last - t0, 3),
        "queue_wait_seconds": spread(
            [s - c for s, c in zip(started, created, strict=True) if s is not None]
        ),
        "run_seconds": spread(durations),
        "run_overhead_seconds": round(statistics.fmean(durations) - per_run, 3)
        if durations
        else None,
        "peak_running_runs": peak_overlap(spans),
        "mean_running_runs": round(sum(durations) / (last - t0), 1) if last > t0 else 0.0,
        "upstream_peak_in_flight": seen["peak_in_flight"],
        "upstream_mean_in_flight": round(sum(d - a for a, d in up_spans) / (last - t0), 1)
        if last > t0
        else 0.0,
        "timeline_bucket_seconds": bucket,
        "running_runs_timeline": occupancy(spans, t0, last, bucket),
        "upstream_in_flight_timeline": occupancy(up_spans, t0, last, bucket),
    }


def check(
    report: dict[str, Any], args: argparse.Namespace, runs: list[dict[str, Any]]
) -> list[str]:
    problems = []
    records = args.pages * args.page_size
    bad = [r for r in runs if r["status"] != "succeeded"]
    for run in bad[:5]:
        problems.append(f"run {run['id']}: {run['status']} {run['error']}")
    if len(bad) > 5:
        problems.append(f"... and {len(bad) - 5} more runs not succeeded")
    wrong = [
        r["id"]
        for r in runs
        if r["status"] == "succeeded"
        and (r["pages"], r["requests"], r["inserted"], r["rejected"])
        != (args.pages, args.pages, records, 0)
    ]
    if wrong:
        problems.append(f"{len(wrong)} run(s) with wrong counts, e.g. {wrong[:3]}")
    if report["records_in_table"] != args.tasks * records:
        problems.append(
            f"{report['records_in_table']} records stored, expected {args.tasks * records}"
        )
    upstream = report["upstream"]
    if upstream["requests"] != args.tasks * args.pages or upstream["duplicate_count"]:
        problems.append(
            f"upstream saw {upstream['requests']} requests ({upstream['duplicate_count']} "
            f"duplicates), expected exactly {args.tasks * args.pages}"
        )
    return problems


def print_report(report: dict[str, Any]) -> None:
    run, upstream, cpu = report["runs"], report["upstream"], report["cpu_seconds"]
    rows = [
        ("database", report["database"]),
        ("code", f"{report['code'].get('commit')} (+{report['code'].get('modified_files')} files)"),
        ("worker env", " ".join(f"{k}={v}" for k, v in report["worker_env"].items()) or "-"),
        ("what-if", ", ".join(report["what_if"]) or "-"),
        (
            "tasks x pages x records",
            f"{report['tasks']} x {report['pages']} x {report['page_size']}, "
            f"latency {report['latency'] * 1000:.0f} ms/page",
        ),
        ("max_jobs", str(report["max_jobs"])),
        ("", ""),
        ("trigger phase", f"{report['trigger_seconds']:.2f} s ({report['tasks']} POSTs)"),
        ("wall (first trigger -> last)", f"{report['wall_seconds']:.2f} s"),
        ("ideal", f"{report['ideal_seconds']:.2f} s"),
        (
            "ratio",
            f"{report['ratio']:.2f} (target <= {TARGET_RATIO}) "
            + ("OK" if report["ratio"] <= TARGET_RATIO else "OVER"),
        ),
        ("runs", "  ".join(f"{k} {v}" for k, v in report["statuses"].items())),
        ("records in table", f"{report['records_in_table']:,}"),
        (
            "upstream requests",
            f"{upstream['requests']:,} ({upstream['duplicate_count']} duplicates), "
            f"peak in flight {upstream['peak_in_flight']}",
        ),
        ("queue wait s", _spread(run["queue_wait_seconds"])),
        ("run (started->finished) s", _spread(run["run_seconds"])),
        ("  overhead over pages x latency", f"{run['run_overhead_seconds']} s/run"),
        (
            "running runs peak / mean",
            f"{run['peak_running_runs']} / {run['mean_running_runs']}",
        ),
        ("upstream in flight mean", str(run["upstream_mean_in_flight"])),
        (
            "worker RSS idle / peak",
            f"{report['worker_rss_idle_mib']} / {report['worker_rss_peak_mib']} MiB",
        ),
        ("CPU s", "  ".join(f"{k} {v:.2f}" for k, v in cpu.items())),
        (
            "worker CPU per run / share",
            f"{report['worker_cpu_ms_per_run']:.1f} ms / "
            f"{report['worker_cpu_share']:.0%} of a core",
        ),
        ("retried runs", str(report["retried_runs"])),
        ("Redis commands per run", f"{report['redis_commands_server_wide'] / report['tasks']:.1f}"),
    ]
    if report["worker_loop_lag_ms"]:
        rows.append(("worker loop lag ms", _spread(report["worker_loop_lag_ms"])))
    tasks = report["tasks"]
    for name, value in sorted(report["worker_db_counts"].items()):
        rows.append((f"  worker DB: {name}", f"{value:,} ({value / tasks:.2f}/run)"))
    print("\nBacksync concurrency benchmark")
    print("-" * 78)
    for label, value in rows:
        print(f"{label:<40} {value}")
    bucket = run["timeline_bucket_seconds"]
    print(f"running runs per {bucket:g} s:  {_line(run['running_runs_timeline'])}")
    print(f"upstream in flight per {bucket:g} s:  {_line(run['upstream_in_flight_timeline'])}")
    print("-" * 78)


def _spread(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in values.items())


def _line(values: list[float]) -> str:
    return " ".join(f"{v:.0f}" for v in values)


# ---- main ---------------------------------------------------------------------------


def bench_settings(
    args: argparse.Namespace, tmpdir: Path, name: str = "conc", **extra: Any
) -> tuple[Settings, str | None]:
    """The bench's settings (queue and keys of its own, named after `name`) and, for
    PostgreSQL, the admin URL that creates its database."""
    database_url, admin_url = bench_database(args.database_url, args.database_name, tmpdir)
    tag = secrets.token_hex(4)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=args.redis_url,
        secret_keys=[Fernet.generate_key().decode()],
        queue_name=f"backsync:bench-{name}:{tag}",
        redis_key_prefix=f"backsync-bench-{name}-{tag}",
        block_private_targets=False,
        log_level="WARNING",
        api_rate_per_second=0,  # the bench polls as fast as it measures, not the limit
        **extra,
    )
    return settings, admin_url


def _is_local(admin_url: str | None) -> bool:
    return admin_url is not None and (make_url(admin_url).host or "localhost") in (
        "127.0.0.1",
        "localhost",
        "::1",
    )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    tmpdir = Path(tempfile.mkdtemp(prefix="backsync-bench-conc-"))
    settings, admin_url = bench_settings(args, tmpdir, worker_max_jobs=args.max_jobs)
    upstream: subprocess.Popen[str] | None = None
    worker: subprocess.Popen[bytes] | None = None
    sampler: RssSampler | None = None
    spy: subprocess.Popen[bytes] | None = None
    engine: AsyncEngine | None = None
    worker_log = tmpdir / "worker.log"
    counts_out = tmpdir / "counts.json" if args.count or args.what_if else None
    try:
        if admin_url is not None:
            name = args.database_name
            await _admin(
                admin_url,
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                f'CREATE DATABASE "{name}"',
            )
        await upgrade(settings.database_url)
        version = await server_version(settings.database_url)
        engine = create_engine(settings.database_url, pool_size=2)

        upstream, base = start_upstream(args)
        worker_env = {**args.worker_env, **what_if_env(args.what_if)}
        worker = start_worker(settings, worker_log, worker_env, counts_out)
        sampler = RssSampler(worker.pid)
        sampler.start()
        meter = CpuMeter(worker.pid, upstream.pid, _is_local(admin_url))

        auth = {"Authorization": f"Bearer {await _create_key(settings, 'bench', None)}"}
        app = create_app(settings)
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://backsync"
            ) as client,
            httpx.AsyncClient(base_url=base, trust_env=False) as upstream_client,
        ):
            await wait_warmup(client, auth, base, worker)
            idle_rss = sampler.current
            started = time.perf_counter()
            task_ids = await register(client, auth, args, base)
            register_seconds = time.perf_counter() - started
            print(f"registered {len(task_ids)} tasks in {register_seconds:.2f} s", flush=True)
            (await upstream_client.post(RESET_PATH)).raise_for_status()
            if args.quiet_wait > 0:
                busy = wait_quiet(args.quiet_wait)
                if busy >= 20:
                    print(f"  warning: machine still {busy:.0f}% busy", file=sys.stderr)
            if args.py_spy:
                spy = start_py_spy(worker.pid, args.py_spy, args.py_spy_rate)

            print(f"triggering {len(task_ids)} runs (worker pid {worker.pid}) ...", flush=True)
            before = meter.snapshot()
            redis_before = await redis_commands(args.redis_url)
            t0 = time.time()
            started = time.perf_counter()
            run_ids = await trigger_all(client, auth, task_ids, args.api_concurrency)
            trigger_seconds = time.perf_counter() - started
            statuses = await wait_final(engine, run_ids, worker, args.poll_interval, args.timeout)
            polled_wall = time.perf_counter() - started
            cpu = CpuMeter.delta(before, meter.snapshot())
            redis_used = await redis_commands(args.redis_url) - redis_before
            if spy is not None:
                stop_py_spy(spy)
                spy = None
            seen = (await upstream_client.get(STATS_PATH)).raise_for_status().json()

        peak_rss = sampler.peak
        stop_process(worker)  # the counters are written as it exits
        counted = json.loads(counts_out.read_text()) if counts_out and counts_out.exists() else {}
        runs = await read_runs(engine, run_ids)
        in_table = await count_records(engine, task_ids)
        timing = figures(args, t0, runs, seen)
        ideal = math.ceil(args.tasks / args.max_jobs) * args.pages * args.latency
        wall = timing.pop("wall_seconds")
        lags = [1000 * lag for at, lag in counted.get("loop_lag", []) if t0 <= at <= t0 + wall]
        report: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "tasks": args.tasks,
            "pages": args.pages,
            "page_size": args.page_size,
            "latency": args.latency,
            "max_jobs": args.max_jobs,
            "worker_env": args.worker_env,
            "what_if": args.what_if,
            "database": version,
            "machine": machine(),
            "code": code_version(),
            "register_seconds": round(register_seconds, 3),
            "trigger_seconds": round(trigger_seconds, 3),
            "wall_seconds": wall,
            "polled_wall_seconds": round(polled_wall, 3),
            "ideal_seconds": round(ideal, 3),
            "ratio": round(wall / ideal, 3),
            "target_ratio": TARGET_RATIO,
            "statuses": statuses,
            "retried_runs": sum(1 for r in runs if r["attempt"] > 1),
            "records_in_table": in_table,
            "upstream": {k: v for k, v in seen.items() if k != "spans"},
            "runs": timing,
            "worker_rss_idle_mib": _mib(idle_rss),
            "worker_rss_peak_mib": _mib(peak_rss),
            "cpu_seconds": cpu,
            "worker_cpu_ms_per_run": round(1000 * cpu["worker"] / args.tasks, 2),
            "worker_cpu_share": round(cpu["worker"] / wall, 2),
            "worker_loop_lag_ms": spread(lags),
            "redis_commands_server_wide": redis_used,
            "worker_db_counts": counted.get("counts", {}),
            "disturbed": cpu["other"] > 0.25 * wall,
        }
        problems = check(report, args, runs)
        report["within_target"] = report["ratio"] <= TARGET_RATIO
        report["ok"] = not problems
        report["problems"] = problems
        print_report(report)
        if report["disturbed"]:
            print("warning: other processes used the CPU meanwhile (see `other`)", file=sys.stderr)
        if args.py_spy:
            print_py_spy(args.py_spy / "concurrency.txt", "the concurrent runs")
        return report
    except BaseException:
        if worker_log.exists():
            tail = worker_log.read_text(errors="replace")[-4000:]
            if tail.strip():
                print(f"--- worker log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        if spy is not None:
            stop_py_spy(spy)
        if sampler is not None:
            sampler.stop()
        stop_process(worker)
        stop_process(upstream)
        if engine is not None:
            await engine.dispose()
        with contextlib.suppress(Exception):
            await clean_redis(settings)
        if admin_url is not None:
            with contextlib.suppress(Exception):
                await _admin(
                    admin_url, f'DROP DATABASE IF EXISTS "{args.database_name}" WITH (FORCE)'
                )
        shutil.rmtree(tmpdir, ignore_errors=True)


def _env_pair(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not name.startswith("BACKSYNC_"):
        raise argparse.ArgumentTypeError("expected BACKSYNC_NAME=VALUE")
    return name, setting


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.concurrency",
        description="Many tasks against a slow upstream, one worker: wall time vs ideal.",
    )
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--max-jobs", type=int, default=50, help="the worker's max_jobs")
    parser.add_argument("--pages", type=int, default=3, help="pages per task")
    parser.add_argument("--page-size", type=int, default=100, help="records per page")
    parser.add_argument("--latency", type=float, default=0.2, help="upstream seconds per page")
    add_server_arguments(parser, BENCH_DB)
    parser.add_argument(
        "--api-concurrency",
        type=int,
        default=10,
        help="API requests in flight at once while registering and triggering",
    )
    parser.add_argument("--poll-interval", type=float, default=0.25, help="seconds")
    parser.add_argument("--timeout", type=float, default=300, help="for all runs, seconds")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        metavar="SECONDS",
        help="before triggering, wait up to this long for the machine to be idle (0: don't)",
    )
    parser.add_argument(
        "--worker-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="BACKSYNC_NAME=VALUE",
        help="a setting for the worker (repeatable), e.g. BACKSYNC_WORKER_POLL_DELAY=0.2",
    )
    parser.add_argument(
        "--what-if",
        action="append",
        default=[],
        metavar="NAME",
        help="measure a worker change without making it (repeatable; implies --count): "
        + ", ".join(sorted(WHAT_IFS))
        + ", pool=N (the worker engine's pool_size)",
    )
    parser.add_argument(
        "--count",
        action="store_true",
        help="run the worker under bench.conc_worker to count its connections, checkouts "
        "and statements",
    )
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="sample the worker with py-spy (raw stacks)"
    )
    parser.add_argument("--py-spy-rate", type=int, default=100, help="samples per second")
    parser.add_argument(
        "--fail-over-target",
        action="store_true",
        help=f"exit 1 also when the ratio is over {TARGET_RATIO}",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.tasks, args.max_jobs, args.pages, args.page_size, args.api_concurrency) < 1:
        parser.error("--tasks, --max-jobs, --pages, --page-size, --api-concurrency must be >= 1")
    if args.latency <= 0:
        parser.error("--latency must be > 0")
    if not args.database_name.startswith(BENCH_DB):
        parser.error(f"--database-name must start with {BENCH_DB} (it is dropped)")
    args.worker_env = dict(args.worker_env)
    for name in args.what_if:
        if name not in WHAT_IFS and not (name.startswith("pool=") and name[5:].isdigit()):
            parser.error(f"unknown --what-if {name!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_and_write(args, bench)
    if report is None:
        return 1
    if not report["within_target"]:
        print(f"ratio {report['ratio']} is over the target {TARGET_RATIO}", file=sys.stderr)
    over = args.fail_over_target and not report["within_target"]
    return 1 if report["problems"] or over else 0


if __name__ == "__main__":
    sys.exit(main())
