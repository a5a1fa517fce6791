"""End-to-end ingest benchmark: upstream pages -> real arq worker -> database.

    .venv/bin/python -m bench.ingest [--records 100000] [--page-size 1000]
        [--database-url postgresql://postgres@127.0.0.1:5432/test] [--redis-url redis://...]
        [--with-dlt] [--profile]

1. creates a fresh database `backsync_bench` on the PostgreSQL server of
   `--database-url` (or, for any `sqlite://...` URL, a SQLite file in a temp directory),
   and migrates it;
2. starts `bench.upstream` in its own process: N records in pages of P, cursor
   pagination, every page pre-rendered with a strong `ETag` (304 on `If-None-Match`);
3. starts a real worker (`python -m service worker`) as a subprocess and samples its RSS
   every 50 ms;
4. registers a task and triggers a run through the real API (in this process), polls
   the run's row until the run is final (the **first sync**; `RunWatcher`), every 5% of
   the time elapsed so far, at least 5 and at most 50 ms apart (`poll_interval`), then
   reads the run through `GET /v1/runs/{id}`;
5. triggers a second, **unchanged resync** of the same task (every page comes back byte
   for byte: recognised by its stored digest, not decoded), then a **stamped resync**
   (the upstream stamps every response's envelope: the bytes differ, the records do
   not; recognised by the stored records digest after one decode), then, with a query
   parameter the upstream ignores added to the task, a **compared resync** (no stored
   validator applies: every record is decoded and compared, and found unchanged);
5b. right after the first sync, measures the database's own rate for the same rows
   (`bench/ceilings.py`: batched `INSERT … ON CONFLICT` per page of rows, and `COPY` on
   PostgreSQL) and prints the first sync as a share of it; on PostgreSQL, every run and
   every ceiling starts from a `CHECKPOINT` (`checkpoint`);
6. registers a second task on the same data with `"conditional": true`, runs it once
   (it stores every page's validator) and then again: the **conditional resync**, where
   every page answers 304;
7. with `--with-dlt`: stops the worker, then runs dlt's `rest_api` source
   (`bench/dlt_pipeline.py`, in its own venv `bench/.work/venv-dlt` made once from
   `bench/requirements-dlt.txt`: dlt is no dependency of Backsync) against the same
   upstream into database `backsync_bench_dlt` on the same server, twice (first load,
   unchanged reload), and prints both tools side by side;
8. prints the figures, checks the counts (exactly N inserted, then N unchanged; the
   conditional resync all `not_modified` with nothing written; dlt's table exactly N
   rows; exit 1 otherwise), compares with the targets (reported, not enforced) and
   writes `bench/results.json`;
9. stops the processes and drops the databases.

Before each run it waits (`--quiet-wait`) for the machine to be idle, and it reports
the CPU seconds used meanwhile by the worker, the upstream, this process (which serves
the polls), PostgreSQL (when local) and everything else (`other`): a run during which
other processes used more than a quarter of a core is flagged `disturbed`.

`--profile` runs the worker under `bench.profile_worker` (per-stage timers) and prints
where each run's time went, per page; `--what-if NAME` measures a change without making
it (see `WHAT_IFS`); `--py-spy DIR` samples the worker with py-spy during each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil  # type: ignore[import-untyped, unused-ignore]
from asgi_lifespan import LifespanManager
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bench.ceilings import database_ceilings, prepared_pages
from bench.upstream import PATH, STAMP_PATH, WARMUP_PAGES_PATH, token_of
from service.app import create_app
from service.cli import _create_key
from service.config import Settings
from service.db import create_engine
from service.migrations import upgrade
from service.sync.extract import extract, records_of

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.json"
FINAL = {"succeeded", "failed", "cancelled"}
BENCH_DB = "backsync_bench"


class BenchError(Exception):
    pass


# ---- processes ----------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Peak RSS of one process, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.current = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.current = rss
            self.peak = max(self.peak, rss)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    times: dict[int, float] = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            cpu = process.cpu_times()
            times[process.pid] = cpu.user + cpu.system
    return times


def postgres_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("postgres", "postmaster"):
            found.append(process)
    return found


def postgres_cpu_seconds() -> dict[int, float]:
    """Every PostgreSQL process, plus (under the postmaster's negative pid) what its
    exited children used: a client that connects and disconnects within the span, as
    dlt does, leaves its backend's CPU there."""
    processes = postgres_processes()
    times = cpu_seconds(processes)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.ppid() not in times:  # the postmaster
                cpu = process.cpu_times()
                times[-process.pid] = cpu.children_user + cpu.children_system
    return times


def children_cpu_seconds() -> float:
    """CPU used by this process's waited-for children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds used by the worker, the upstream and (local) PostgreSQL during a span;
    `children` counts subprocesses that ran to completion within it (the dlt runs)."""

    def __init__(self, worker: int | None, upstream: int, local_pg: bool) -> None:
        self.worker = psutil.Process(worker) if worker is not None else None
        self.upstream = psutil.Process(upstream)
        self.local_pg = local_pg

    def snapshot(self) -> dict[str, dict[int, float]]:
        snap = {
            "worker": cpu_seconds([self.worker]) if self.worker is not None else {},
            "upstream": cpu_seconds([self.upstream]),
            "bench": cpu_seconds([psutil.Process()]),
            "children": {0: children_cpu_seconds()},
        }
        if self.local_pg:
            snap["postgres"] = postgres_cpu_seconds()
        system = psutil.cpu_times()
        snap["machine"] = {0: system.user + system.system + getattr(system, "softirq", 0.0)}
        return snap

    @staticmethod
    def delta(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
    ) -> dict[str, float]:
        """Per group; a PostgreSQL backend that exited in between is not counted.

        `other` is what the rest of the machine used meanwhile (other jobs disturb the
        figures: keep it near zero)."""
        spent = {
            group: round(
                sum(value - before.get(group, {}).get(pid, 0.0) for pid, value in pids.items()), 3
            )
            for group, pids in after.items()
        }
        machine = spent.pop("machine")
        spent["other"] = round(max(0.0, machine - sum(spent.values())), 3)
        return spent


def wait_quiet(limit_seconds: float, busy_below: float = 20.0) -> float:
    """Wait (up to `limit_seconds`) until the machine's CPU use over 0.5 s drops below
    `busy_below` percent; returns the last reading. Other jobs skew every figure."""
    deadline = time.monotonic() + limit_seconds
    while True:
        busy = float(psutil.cpu_percent(interval=0.5))
        if busy < busy_below or time.monotonic() >= deadline:
            return busy
        print(f"  machine busy ({busy:.0f}% CPU), waiting ...", flush=True)


def start_upstream(
    records: int, page_size: int, warmup_records: int = 0
) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.upstream",
            "--records",
            str(records),
            "--page-size",
            str(page_size),
            "--warmup-records",
            str(warmup_records),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until READY (or EOF if it died)
    if not line.startswith("READY "):
        process.kill()
        raise BenchError(f"upstream did not start: {line!r}")
    return process, f"http://127.0.0.1:{int(line.split()[1])}"


WHAT_IFS: dict[str, dict[str, str]] = {
    # worker-side, applied by bench.profile_worker (see its `experiments`)
    "gc-threshold": {"BENCH_GC": "100000,50,1000"},
    "gc-default": {"BENCH_GC": "default"},
    "free-extract": {"BENCH_FREE_EXTRACT": "1"},
    # database-side, applied here (PostgreSQL only)
    "analyze": {},
}
"""`gc-freeze`, `no-pre-ping`, `prefetch` and `drop-record-fk` are gone: the product does
them now (the worker freezes startup's heap and raises the GC thresholds, its engine does
not pre-ping, the runner reads one page ahead, and `record` has no foreign key to
`task`). `gc-threshold` is applied after the worker's own GC setup; `gc-default` undoes
that setup (CPython's defaults, nothing frozen), to see what it is worth.
`free-extract` makes decoding and extracting a page the worker saw before free (both
cached, by the body's bytes and by the decoded list): the conditional first sync, a
fresh task over the first sync's pages, then shows what the worker's extraction CPU
costs a first sync's wall time (session 13: 0.93 -> 0.72 s and 0.88 -> 0.67 s, about
what that CPU was, so the worker's CPU is on the critical path).
`analyze` runs `ANALYZE` on the bench database after each first sync, outside the timed
runs: the resync then plans its comparison with statistics of the table as loaded,
which autovacuum would have gathered before a real task's next scheduled run."""

TARGETS = {"first_sync_records_per_second": 70_000, "resync_speedup": 2, "conditional_speedup": 10}


def worker_env(settings: Settings) -> dict[str, str]:
    """This process's environment, with `settings` as the worker's (and no other
    `BACKSYNC_` variable of the caller's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSYNC_")}
    return env | {
        "BACKSYNC_DATABASE_URL": settings.database_url,
        "BACKSYNC_REDIS_URL": settings.redis_url or "",
        "BACKSYNC_SECRET_KEYS": ",".join(settings.secret_keys),
        "BACKSYNC_QUEUE_NAME": settings.queue_name,
        "BACKSYNC_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "BACKSYNC_WORKER_MAX_JOBS": str(settings.worker_max_jobs),
        # Off, explicitly: every bench runs one tenant, and its default cap (half of
        # max_jobs) would change what each measures (bench/RESULTS.md). A
        # `--worker-env BACKSYNC_TENANT_MAX_RUNNING=N` measures a cap.
        "BACKSYNC_TENANT_MAX_RUNNING": "0",
        "BACKSYNC_BLOCK_PRIVATE_TARGETS": "false",
        "BACKSYNC_LOG_LEVEL": "WARNING",
    }


def add_server_arguments(parser: argparse.ArgumentParser, database_name: str) -> None:
    """--database-url, --redis-url, --database-name: what both benchmarks run against."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BACKSYNC_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="PostgreSQL server to create the bench database on (its database name is only "
        "used to connect for CREATE DATABASE); any sqlite:// URL uses a temp SQLite file",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BACKSYNC_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--database-name", default=database_name, help="dropped and re-created!")


def start_worker(
    settings: Settings, log_path: Path, profile_out: Path | None, what_ifs: list[str]
) -> subprocess.Popen[bytes]:
    env = worker_env(settings)
    module = "service"
    for name in what_ifs:
        env.update(WHAT_IFS[name])
    if profile_out is not None:
        env["BENCH_PROFILE_OUT"] = str(profile_out)
        module = "bench.profile_worker"
    argv = [sys.executable, "-m", module] + ([] if profile_out else ["worker"])
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


# ---- dlt, for comparison (never a dependency of Backsync) ---------------------------

DLT_REQUIREMENTS = Path(__file__).resolve().parent / "requirements-dlt.txt"
DLT_VENV = Path(__file__).resolve().parent / ".work" / "venv-dlt"
DLT_SCRIPT = Path(__file__).resolve().parent / "dlt_pipeline.py"


def ensure_dlt_venv(venv: Path = DLT_VENV, requirements: Path = DLT_REQUIREMENTS) -> Path:
    """The separate venv that has dlt: created and installed once, then reused while
    `requirements` is unchanged (a copy of it is kept in the venv). Returns its python."""
    python = venv / "bin" / "python"
    stamp = venv / "requirements.installed"
    wanted = requirements.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"dlt: creating {venv} and installing {requirements.name} (once) ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    try:
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(venv, ignore_errors=True)
        raise BenchError(f"could not create the dlt venv: {exc}") from exc
    stamp.write_text(wanted)
    return python


def stop_process(process: subprocess.Popen[Any] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


# ---- database -----------------------------------------------------------------------


async def _admin(admin_url: str, *statements: str) -> None:
    engine = create_engine(admin_url)
    try:
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def server_version(url: str) -> str:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                version = (await connection.execute(text("SHOW server_version"))).scalar_one()
                return f"PostgreSQL {version}"
            version = (await connection.execute(text("select sqlite_version()"))).scalar_one()
            return f"SQLite {version}"
    finally:
        await engine.dispose()


async def analyze(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("ANALYZE"))
    finally:
        await engine.dispose()


async def checkpoint(url: str) -> None:
    """PostgreSQL: a `CHECKPOINT` before each measured run, as before each ceiling
    (`bench.ceilings`): every run starts with no dirty buffers of an earlier one to
    flush and no checkpoint about to fall due. Skipped where the role may not."""
    engine = create_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            return
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            with contextlib.suppress(DBAPIError):
                await connection.execute(text("CHECKPOINT"))
    finally:
        await engine.dispose()


async def count_records(url: str, task_id: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text("SELECT count(*) FROM record WHERE task_id = :t"), {"t": task_id}
            )
            return int(result.scalar_one())
    finally:
        await engine.dispose()


# ---- measuring ----------------------------------------------------------------------


@dataclass
class RunResult:
    name: str
    run_id: str
    status: str
    wall_seconds: float
    """From the trigger's response to the first poll that saw the final status."""
    worker_seconds: float
    """The run's `finished_at - started_at`."""
    queue_seconds: float
    """The run's `started_at - created_at` (enqueue and pick-up)."""
    records_per_second: float
    stats: dict[str, int]
    cpu_seconds: dict[str, float]
    error: Any = None
    profile: dict[str, Any] | None = None
    disturbed: bool = False
    """Other processes used more than a quarter of a core meanwhile: the figure is suspect."""


def _service_seconds(result: RunResult) -> float:
    """A run's time on the service's clock: from its creation (the trigger) to its end."""
    return result.queue_seconds + result.worker_seconds


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


POLL_SHARE, POLL_MIN, POLL_MAX = 0.05, 0.005, 0.05


def poll_interval(elapsed: float) -> float:
    """The wait before the next poll: 5% of the run's time so far, 5-50 ms.

    A fixed 20 ms poll (until session 12) overshot a run's end by 10 ms on average,
    a tenth of a 304 resync of 100 pages and 1% of a first sync; and during a first
    sync its 50 requests a second took this process 0.10-0.15 CPU-s from the two cores
    the worker and PostgreSQL share, which the database's ceilings (measured with
    nothing else running) do not pay. Proportional polling keeps the overshoot within
    5% of any run (2.5% on average) and polls a first sync a third as often."""
    return min(POLL_MAX, max(POLL_MIN, POLL_SHARE * elapsed))


class RunWatcher:
    """A run's status, read straight from its row (one indexed read on a connection kept
    open) while it runs; the run as the API shows it is read once, at the end.

    Until session 13 each poll was a `GET /v1/runs/{id}` through the app in this
    process: about 3 ms of this process's CPU and an API key look-up on the database
    each, 0.07-0.09 CPU-s during a first sync of 100k records, taken from the two cores
    the worker and PostgreSQL share (the ceilings run with no observer at all). The
    wall clock is the same: trigger to the first poll that sees the run final."""

    def __init__(self, database_url: str) -> None:
        self._engine = create_engine(database_url)
        self._connection: Any = None

    async def status(self, run_id: str) -> str:
        if self._connection is None:  # autocommit: SQLite would keep reading one snapshot
            connection = await self._engine.connect()
            self._connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        result = await self._connection.execute(
            text("SELECT status FROM run WHERE id = :id"), {"id": run_id}
        )
        return str(result.scalar_one())

    async def __aenter__(self) -> RunWatcher:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()
        await self._engine.dispose()


async def run_once(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    task_id: str,
    name: str,
    records: int,
    worker: subprocess.Popen[bytes],
    meter: CpuMeter,
    limit_seconds: float,
    watcher: RunWatcher,
) -> RunResult:
    before = meter.snapshot()
    start = time.perf_counter()
    response = await client.post(f"/v1/tasks/{task_id}/runs", headers=auth)
    if response.status_code not in (200, 202):
        raise BenchError(f"trigger failed: {response.status_code} {response.text}")
    run = response.json()
    deadline = start + limit_seconds
    status = run["status"]
    while status not in FINAL:
        if worker.poll() is not None:
            raise BenchError(f"the worker exited (code {worker.returncode}) during the {name}")
        if time.perf_counter() > deadline:
            raise BenchError(f"{name}: run {run['id']} still {status} after {limit_seconds}s")
        await asyncio.sleep(poll_interval(time.perf_counter() - start))
        status = await watcher.status(run["id"])
    wall = time.perf_counter() - start
    response = await client.get(f"/v1/runs/{run['id']}", headers=auth)
    if response.status_code != 200:
        raise BenchError(f"reading the run failed: {response.status_code} {response.text}")
    run = response.json()
    cpu = CpuMeter.delta(before, meter.snapshot())
    started, finished = run.get("started_at"), run.get("finished_at")
    worker_seconds = (_ts(finished) - _ts(started)).total_seconds() if started and finished else 0.0
    queue_seconds = (_ts(started) - _ts(run["created_at"])).total_seconds() if started else 0.0
    return RunResult(
        name=name,
        run_id=run["id"],
        status=run["status"],
        wall_seconds=round(wall, 3),
        worker_seconds=round(worker_seconds, 3),
        queue_seconds=round(queue_seconds, 3),
        records_per_second=round(records / wall, 1) if wall else 0.0,
        stats=run["stats"],
        cpu_seconds=cpu,
        error=run.get("error"),
        disturbed=cpu["other"] > 0.25 * wall,
    )


async def upstream_ceiling(base: str, pages: int) -> dict[str, float]:
    """The upstream alone (every page fetched in turn, bodies kept) and, in this process,
    decode + extract + hash alone (page by page, nothing kept: like the worker)."""
    bodies: list[bytes] = []
    async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
        start = time.perf_counter()
        for page in range(pages):
            params = {"next_token": token_of(page)} if page else None
            response = await client.get(PATH, params=params)
            response.raise_for_status()
            bodies.append(response.content)
        fetch = time.perf_counter() - start
    decode = extract_seconds = 0.0
    for raw in bodies:
        start = time.perf_counter()
        body = orjson.loads(raw)
        middle = time.perf_counter()
        extract(records_of(body, "data"), "id")
        decode += middle - start
        extract_seconds += time.perf_counter() - middle
        del body
    return {
        "fetch_seconds": round(fetch, 4),
        "decode_seconds": round(decode, 4),
        "extract_hash_seconds": round(extract_seconds, 4),
        "bytes": sum(len(body) for body in bodies),
    }


async def wait_warmup(
    client: httpx.AsyncClient, auth: dict[str, str], base: str, worker: subprocess.Popen[bytes]
) -> None:
    """A one-record task: proves the worker is up and warms its imports and pools."""
    response = await client.post(
        "/v1/tasks",
        json={
            "name": "bench-warmup",
            "source": {"url": f"{base}/warmup", "records_path": "data", "primary_key": "id"},
        },
        headers=auth,
    )
    if response.status_code != 201:
        raise BenchError(
            f"could not register the warm-up task: {response.status_code} {response.text}"
        )
    task_id = response.json()["id"]
    run = (await client.post(f"/v1/tasks/{task_id}/runs", headers=auth)).json()
    deadline = time.perf_counter() + 60
    while run["status"] not in FINAL:
        if worker.poll() is not None:
            raise BenchError(f"the worker exited (code {worker.returncode}) at startup")
        if time.perf_counter() > deadline:
            raise BenchError("the worker did not pick up the warm-up run within 60 s")
        await asyncio.sleep(0.05)
        run = (await client.get(f"/v1/runs/{run['id']}", headers=auth)).json()
    if run["status"] != "succeeded":
        raise BenchError(f"warm-up run {run['status']}: {run.get('error')}")


def cursor_source(url: str) -> dict[str, Any]:
    """A task's source for the bench upstream's pages at `url` (`bench.upstream`)."""
    return {
        "url": url,
        "records_path": "data",
        "primary_key": "id",
        "pagination": {
            "type": "cursor",
            "cursor_path": "next_token",
            "cursor_param": "next_token",
        },
    }


async def warm_with_pages(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    base: str,
    worker: subprocess.Popen[bytes],
    page_size: int,
) -> None:
    """A first sync of other records in pages like the benchmark's, before anything is
    measured (`--warmup-records`).

    A worker's first large run after it started was 10-15% slower than the same work
    later in the same process (session 13: with the two fresh tasks' runs swapped, the
    one run first was the slower either way), and the database's ceilings, measured
    after it, do not pay that. A production worker has synced before; so has this one
    now. The warm-up's records go into the same `record` table (another task's), so the
    first sync inserts into a table that is not empty, where the ceilings' copy is."""
    source = cursor_source(f"{base}{WARMUP_PAGES_PATH}")
    response = await client.post(
        "/v1/tasks", json={"name": "bench-warmup-pages", "source": source}, headers=auth
    )
    if response.status_code != 201:
        raise BenchError(f"could not register the warm-up task: {response.status_code}")
    run = (await client.post(f"/v1/tasks/{response.json()['id']}/runs", headers=auth)).json()
    deadline = time.perf_counter() + 120
    while run["status"] not in FINAL:
        if worker.poll() is not None or time.perf_counter() > deadline:
            raise BenchError("the warm-up first sync did not finish")
        await asyncio.sleep(0.05)
        run = (await client.get(f"/v1/runs/{run['id']}", headers=auth)).json()
    if run["status"] != "succeeded":
        raise BenchError(f"warm-up first sync {run['status']}: {run.get('error')}")


def read_profile(path: Path, run_id: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["run_id"] == run_id:
            return dict(entry)
    return None


def start_py_spy(pid: int, directory: Path, name: str) -> subprocess.Popen[bytes]:
    """`py-spy record` attached to the worker (needs ptrace rights; `pip install py-spy`)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name.replace(' ', '-')}.txt"
    argv = [binary, "record", "--pid", str(pid), "--rate", "500", "--nonblocking", "--idle"]
    argv += ["--format", "raw"]
    argv += ["--output", str(out)]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # let it attach before the run starts
    return process


def stop_py_spy(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _frame(frame: str) -> str:
    """`fn (path/to/module.py:12)` -> `module.py:fn`, without the line number."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{name}"


def print_py_spy(path: Path, name: str, top: int = 25) -> None:
    """Top functions by inclusive and by self samples, from py-spy's raw (collapsed) output."""
    if not path.exists():
        print(f"\n  (no py-spy output for the {name}: {path})")
        return
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(frame) for frame in stack.split(";") if "(" in frame]
        if not frames:
            continue
        total += count
        if frames[-1].startswith("selectors.py:"):
            idle += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return
    trunk = max(inclusive.values())
    print(f"\n  py-spy, {name}: {total} samples ({100 * idle / total:.0f}% waiting in the loop)")
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"  top {top} by {title}:")
        ranked = [
            (frame, count)
            for frame, count in sorted(table.items(), key=lambda item: -item[1])
            if count < trunk  # the trunk every busy sample shares (runpy, typer, asyncio.run)
        ]
        for frame, count in ranked[:top]:
            print(f"    {100 * count / total:5.1f}%  {frame}")


# ---- report -------------------------------------------------------------------------


def _mib(value: int) -> float:
    return round(value / 1024 / 1024, 1)


def print_profile(result: RunResult) -> None:
    """Per page, where `execute_run`'s time went (see bench.profile_worker's docstring).

    The worker reads one page ahead: fetch, decode, extract and the validator lookup run
    in a task *while* the previous page commits, so they are shown apart and do not add
    up with the rest; what the run loop itself waited for them is `wait for page`."""
    profile = result.profile
    if not profile:
        return
    stages: dict[str, list[float]] = profile["stages"]
    pages = max(1, profile["pages"])

    def ms(name: str) -> float:
        return stages.get(name, [0.0, 0])[0] * 1000

    wall = profile["wall"] * 1000
    rows: list[tuple[str, float | None]] = [
        ("wait for page (fetched ahead)", ms("wait for page")),
        ("commit (total)", ms("commit")),
        ("  compare (read-only)", ms("compare (read-only)")),
        ("  write (one commit)", ms("write")),
        ("  python (dedupe, counts)", ms("commit") - ms("compare (read-only)") - ms("write")),
        ("other (loop, arq, claim, end)", wall - ms("wait for page") - ms("commit")),
        ("fetch tasks (overlap):", None),
        ("  validator lookup", ms("validator lookup")),
        ("  fetch (total)", ms("fetch")),
        (
            "    send + response headers",
            ms("fetch") - ms("fetch: body read") - ms("fetch: json decode"),
        ),
        ("    body read", ms("fetch: body read")),
        ("    json decode", ms("fetch: json decode")),
        ("  extract + hash", ms("extract + hash") + ms("records_of")),
        ("(anywhere: gc gen0)", ms("gc gen0")),
        ("(anywhere: gc gen1)", ms("gc gen1")),
        ("(anywhere: gc gen2)", ms("gc gen2")),
    ]
    writes = int(stages.get("write", [0.0, 0])[1])
    print(
        f"\n  profile of the {result.name}: {pages} pages, {writes} writes,"
        f" {wall:.0f} ms in execute_run"
    )
    print(f"  {'stage':<36}{'ms/page':>10}{'share':>9}")
    for label, total in rows:
        if total is None:
            print(f"  {label}")
        else:
            print(f"  {label:<36}{total / pages:>10.2f}{100 * total / wall:>8.1f}%")


def _stats(run: dict[str, Any]) -> str:
    names = ("inserted", "updated", "unchanged", "not_modified")
    return "  ".join(f"{name} {run['stats'][name]:,}" for name in names)


def _cpu(run: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.2f}" for k, v in run["cpu_seconds"].items() if v or k == "other")


def _run_rows(run: dict[str, Any]) -> list[tuple[str, str]]:
    flag = "   DISTURBED" if run["disturbed"] else ""
    return [
        (
            run["name"],
            f"{run['wall_seconds']:.3f} s   {run['records_per_second']:,.0f} records/s{flag}",
        ),
        (
            "  started -> finished",
            f"{run['worker_seconds']:.3f} s   (queued {run['queue_seconds']:.3f} s)",
        ),
        ("  stats", _stats(run)),
        ("  CPU s", _cpu(run)),
    ]


_CEILING_NAMES = {
    "upsert": "batched upsert",
    "upsert_one_statement": "one-statement upsert",
    "copy": "COPY",
}


def _ceiling_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The database's own rate for the same rows, and the first sync as a share of it."""
    records, rows = report["records"], []
    for name, seconds in report["database_ceiling"].items():
        what = name.removesuffix("_seconds")
        share = report["first_sync_share"][what]
        rows.append(
            (
                f"database alone ({_CEILING_NAMES[what]})",
                f"{seconds:.3f} s   {records / seconds:,.0f} records/s;"
                f" first sync at {100 * share:.0f}% of it",
            )
        )
    return rows


def print_report(report: dict[str, Any]) -> None:
    records, pages = report["records"], report["pages"]
    ceiling = report["upstream_ceiling"]
    rows = [
        ("database", report["database"]),
        ("code", f"{report['code'].get('commit')} (+{report['code'].get('modified_files')} files)"),
        ("what-if", ", ".join(report["what_if"]) or "-"),
        ("records / pages", f"{records:,} / {pages:,} (page size {report['page_size']:,})"),
        ("upstream alone (fetch)", f"{records / ceiling['fetch_seconds']:,.0f} records/s"),
        (
            "decode + extract alone",
            f"{records / (ceiling['decode_seconds'] + ceiling['extract_hash_seconds']):,.0f}"
            " records/s",
        ),
        ("", ""),
        *_run_rows(report["first_sync"]),
        *_run_rows(report["resync"]),
        *_run_rows(report["stamped_resync"]),
        *_run_rows(report["compared_resync"]),
        *_run_rows(report["conditional_first_sync"]),
        *_run_rows(report["conditional_resync"]),
        ("", ""),
        *_ceiling_rows(report),
        ("", ""),
        (
            "worker RSS idle / peak",
            f"{report['worker_rss_idle_mib']} / {report['worker_rss_peak_mib']} MiB",
        ),
        (
            "records in table",
            f"{report['records_in_table']:,} (conditional task: "
            f"{report['conditional_records_in_table']:,})",
        ),
    ]
    dlt = report.get("dlt")
    if dlt:
        rows.append(("", ""))
        for run in dlt["runs"]:
            flag = "   DISTURBED" if run["disturbed"] else ""
            rows += [
                (
                    f"dlt {run['name']}",
                    f"{run['process_seconds']:.3f} s   "
                    f"{run['process_records_per_second']:,.0f} records/s (process){flag}",
                ),
                (
                    "  pipeline.run()",
                    f"{run['run_seconds']:.3f} s   {run['run_records_per_second']:,.0f} records/s"
                    f"   (import {run['import_seconds']:.2f} s)",
                ),
                ("  steps s", "  ".join(f"{k} {v:.2f}" for k, v in run["steps"].items())),
                ("  rows in table", f"{run['rows_in_table']:,} ({run['distinct_ids']:,} ids)"),
                ("  CPU s", _cpu(run)),
            ]
    rows.append(("", ""))
    for name, target in report["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        unit = " records/s" if name.endswith("per_second") else "x"
        rows.append(
            (
                name.replace("_", " "),
                f"{target['measured']:,.2f}{unit} vs >= {target['target']:,}{unit}: "
                f"{100 * target['ratio']:.0f}% of target, {verdict}",
            )
        )
    rows.append(
        (
            "  stamped resync speedup",
            f"{report['stamped_resync_speedup']:,.2f}x (bytes differ on every fetch, records"
            " do not; issue 13's target: >= 3x)",
        )
    )
    clock = report["service_clock_speedup"]
    rows.append(
        (
            "  on the service's clock",
            f"stamped {clock['stamped']:,.2f}x, conditional {clock['conditional']:,.2f}x"
            " (created -> finished, no poll overshoot; reported, the targets use the wall)",
        )
    )
    rows.append(
        (
            "  compared resync speedup",
            f"{report['compared_resync_speedup']:,.2f}x (no page digest: every record"
            " compared; reported, no target)",
        )
    )
    print("\nBacksync ingest benchmark")
    print("-" * 86)
    for label, value in rows:
        print(f"{label:<30}{value}")
    print("-" * 86)
    print_side_by_side(report)


def side_by_side(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Backsync's runs next to dlt's: first sync / first load, then the unchanged rerun."""
    dlt_runs = report["dlt"]["runs"] if report.get("dlt") else []
    cases = [
        ("first sync / first load", report["first_sync"], dlt_runs[0] if dlt_runs else None),
        (
            "unchanged resync / reload",
            report["resync"],
            dlt_runs[1] if len(dlt_runs) > 1 else None,
        ),
        ("conditional resync (304s)", report["conditional_resync"], None),
    ]
    table = []
    for case, ours, theirs in cases:
        row: dict[str, Any] = {
            "case": case,
            "backsync_seconds": ours["wall_seconds"],
            "backsync_records_per_second": ours["records_per_second"],
        }
        if theirs is not None:
            row |= {
                "dlt_process_seconds": theirs["process_seconds"],
                "dlt_process_records_per_second": theirs["process_records_per_second"],
                "dlt_run_seconds": theirs["run_seconds"],
                "dlt_run_records_per_second": theirs["run_records_per_second"],
            }
        table.append(row)
    return table


def print_side_by_side(report: dict[str, Any]) -> None:
    if not report.get("dlt"):
        return
    print(
        f"\nside by side: {report['records']:,} records, {report['pages']:,} pages, "
        f"{report['database']}, dlt {report['dlt']['version']} rest_api"
    )
    print(
        f"  {'':<28}{'Backsync':>10}{'':>12}{'dlt (process)':>15}{'':>12}{'dlt run()':>12}{'':>12}"
    )
    print(f"  {'':<28}" + f"{'s':>10}{'records/s':>12}" * 3)

    def cell(seconds: float | None, rate: float | None, width: int) -> str:
        if seconds is None or rate is None:
            return f"{'-':>{width}}{'-':>12}"
        return f"{seconds:>{width}.3f}{rate:>12,.0f}"

    for row in report["side_by_side"]:
        print(
            f"  {row['case']:<28}"
            + cell(row["backsync_seconds"], row["backsync_records_per_second"], 10)
            + cell(row.get("dlt_process_seconds"), row.get("dlt_process_records_per_second"), 15)
            + cell(row.get("dlt_run_seconds"), row.get("dlt_run_records_per_second"), 12)
        )
    print(
        "  Backsync: trigger -> the poll that saw the run final, warm worker. dlt (process): "
        "interpreter start -> exit;\n  dlt run(): pipeline.run() alone (extract, normalize, "
        "load), measured inside the script."
    )


# ---- dlt runs -----------------------------------------------------------------------


def run_dlt(
    python: Path,
    name: str,
    base: str,
    credentials: str,
    workdir: Path,
    records: int,
    meter: CpuMeter,
    limit_seconds: float,
) -> dict[str, Any]:
    """One run of bench/dlt_pipeline.py in its own venv; the pipeline's state persists
    in `workdir` between runs, as a scheduled dlt pipeline's would."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BACKSYNC_")}
    env |= {
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "RUNTIME__LOG_LEVEL": "WARNING",
        "DLT_DATA_DIR": str(workdir / "data"),
    }
    argv = [str(python), str(DLT_SCRIPT), "--base-url", base, "--credentials", credentials]
    argv += ["--pipelines-dir", str(workdir / "pipelines")]
    workdir.mkdir(parents=True, exist_ok=True)
    before = meter.snapshot()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=limit_seconds
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"dlt {name}: still running after {limit_seconds}s") from exc
    wall = time.perf_counter() - start
    cpu = CpuMeter.delta(before, meter.snapshot())
    cpu["dlt"] = cpu.pop("children")
    if done.returncode != 0:
        raise BenchError(f"dlt {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise BenchError(f"dlt {name}: no JSON on stdout: {done.stdout[-2000:]!r}") from exc
    return {
        "name": name,
        "process_seconds": round(wall, 3),
        "process_records_per_second": round(records / wall, 1),
        "run_seconds": out["run_seconds"],
        "run_records_per_second": round(records / out["run_seconds"], 1),
        "import_seconds": out["import_seconds"],
        "steps": out["steps"],
        "rows_in_table": out["rows_in_table"],
        "distinct_ids": out["distinct_ids"],
        "normalized_rows": out["normalized_rows"],
        "has_failed_jobs": out["has_failed_jobs"],
        "loader_file_format": out["loader_file_format"],
        "dlt_version": out["dlt_version"],
        "cpu_seconds": cpu,
        "disturbed": cpu["other"] > 0.25 * wall,
    }


async def count_dlt_rows(url: str) -> tuple[int, int]:
    """Rows and distinct ids in dlt's table, counted here rather than trusting the script."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text("SELECT count(*), count(DISTINCT id) FROM bench.daily_activity")
            )
            rows, ids = result.one()
            return int(rows), int(ids)
    finally:
        await engine.dispose()


# ---- main ---------------------------------------------------------------------------

WARMUP_RECORDS = 20_000
"""The default warm-up first sync (`warm_with_pages`): 20 pages of 1,000."""

BACKSYNC_RUNS = (
    "first sync",
    "unchanged resync",
    "stamped resync",
    "compared resync",
    "conditional first sync",
    "conditional resync",
)
COMPARED_PARAMS = {"compare": "1"}
"""Added to the task's query before the compared resync: the upstream ignores them, but
they make every page URL new to Backsync, so no stored page digest applies and each
page is decoded and compared record by record (the path for upstreams whose bytes
change when their records do not)."""


def _quiet(args: argparse.Namespace) -> None:
    if args.quiet_wait > 0:
        busy = wait_quiet(args.quiet_wait)
        if busy >= 20:
            print(f"  warning: machine still {busy:.0f}% busy", file=sys.stderr)


async def _register(
    client: httpx.AsyncClient, auth: dict[str, str], name: str, source: dict[str, Any], pages: int
) -> str:
    body = {
        "name": name,
        "source": source,
        "limits": {"max_pages": pages + 10, "timeout_seconds": 60},
    }
    response = await client.post("/v1/tasks", json=body, headers=auth)
    if response.status_code != 201:
        raise BenchError(f"could not register {name}: {response.status_code} {response.text}")
    return str(response.json()["id"])


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 2) if denominator else 0.0


def _target(measured: float, target: float) -> dict[str, Any]:
    return {
        "target": target,
        "measured": measured,
        "ratio": round(measured / target, 3),
        "met": measured >= target,
    }


def bench_database(requested_url: str, name: str, tmpdir: Path) -> tuple[str, str | None]:
    """The bench database's URL and, for PostgreSQL, the admin URL that creates it (a
    temp file for any `sqlite://` URL)."""
    requested = Settings(_env_file=None, database_url=requested_url)  # driver filled in
    if requested.is_sqlite:
        return f"sqlite+aiosqlite:///{tmpdir / 'bench.db'}", None
    url = make_url(requested.database_url)
    admin_url = url.render_as_string(hide_password=False)
    return url.set(database=name).render_as_string(hide_password=False), admin_url


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    dlt_python = ensure_dlt_venv() if args.with_dlt else None
    tmpdir = Path(tempfile.mkdtemp(prefix="backsync-bench-"))
    database_url, admin_url = bench_database(args.database_url, args.database_name, tmpdir)
    dlt_url: str | None = None
    if admin_url is not None:
        dlt_database = make_url(admin_url).set(database=f"{args.database_name}_dlt")
        dlt_url = dlt_database.render_as_string(hide_password=False)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=args.redis_url,
        secret_keys=[Fernet.generate_key().decode()],
        queue_name=f"backsync:bench:{secrets.token_hex(4)}",
        block_private_targets=False,
        log_level="WARNING",
        api_rate_per_second=0,  # the bench polls as fast as it measures, not the limit
    )
    local_pg = admin_url is not None and (make_url(admin_url).host or "localhost") in (
        "127.0.0.1",
        "localhost",
        "::1",
    )
    pages = max(1, -(-args.records // args.page_size))
    upstream: subprocess.Popen[str] | None = None
    worker: subprocess.Popen[bytes] | None = None
    sampler: RssSampler | None = None
    profile_out = tmpdir / "profile.jsonl" if args.profile else None
    worker_log = tmpdir / "worker.log"
    databases = [args.database_name] + ([f"{args.database_name}_dlt"] if args.with_dlt else [])
    try:
        if admin_url is not None:
            for name in databases:
                await _admin(
                    admin_url,
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                    f'CREATE DATABASE "{name}"',
                )
        await upgrade(settings.database_url)
        version = await server_version(settings.database_url)

        print(f"upstream: rendering {args.records:,} records in {pages:,} pages ...", flush=True)
        upstream, base = start_upstream(args.records, args.page_size, args.warmup_records)
        ceiling = await upstream_ceiling(base, pages)

        worker = start_worker(settings, worker_log, profile_out, args.what_if)
        sampler = RssSampler(worker.pid)
        sampler.start()
        meter = CpuMeter(worker.pid, upstream.pid, local_pg)

        raw_key = await _create_key(settings, "bench", None)
        auth = {"Authorization": f"Bearer {raw_key}"}
        app = create_app(settings)
        source = cursor_source(f"{base}{PATH}")
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://backsync"
            ) as client,
            RunWatcher(settings.database_url) as watcher,
        ):
            await wait_warmup(client, auth, base, worker)
            idle_rss = sampler.current
            if args.warmup_records:
                print(f"warm-up first sync: {args.warmup_records:,} other records ...", flush=True)
                await warm_with_pages(client, auth, base, worker, args.page_size)
            task_id = await _register(client, auth, "bench-ingest", source, pages)
            conditional_id = await _register(
                client, auth, "bench-ingest-conditional", {**source, "conditional": True}, pages
            )
            results: dict[str, RunResult] = {}
            for name in BACKSYNC_RUNS:
                task = conditional_id if name.startswith("conditional") else task_id
                if name == "compared resync":
                    await _patch_params(client, auth, task, COMPARED_PARAMS)
                await _stamping(base, on=name == "stamped resync")
                await checkpoint(settings.database_url)
                _quiet(args)
                print(f"{name} (worker pid {worker.pid}, task {task}) ...", flush=True)
                spy = start_py_spy(worker.pid, args.py_spy, name) if args.py_spy else None
                try:
                    results[name] = await run_once(
                        client,
                        auth,
                        task,
                        name,
                        args.records,
                        worker,
                        meter,
                        args.timeout,
                        watcher,
                    )
                finally:
                    if spy is not None:
                        stop_py_spy(spy)
                if "analyze" in args.what_if and name.endswith("first sync"):
                    await analyze(settings.database_url)
                if name == "first sync":  # the ceilings next to it: the machine's pace drifts
                    _quiet(args)
                    print("database ceilings (batched upsert, COPY) for the same rows ...")
                    database_ceiling = await database_ceilings(
                        settings.database_url, prepared_pages(args.records, args.page_size)
                    )
        await _stamping(base, on=False)
        in_table = await count_records(settings.database_url, task_id)
        in_conditional = await count_records(settings.database_url, conditional_id)
        if profile_out is not None:
            await asyncio.sleep(0.2)  # the line is written right after the run's final commit
            for result in results.values():
                result.profile = read_profile(profile_out, result.run_id)
        peak_rss = sampler.peak
        sampler.stop()
        stop_process(worker)  # dlt gets the machine without an idle worker polling Redis

        dlt: dict[str, Any] | None = None
        if dlt_python is not None and dlt_url is not None:
            dlt_meter = CpuMeter(None, upstream.pid, local_pg)
            dlt_credentials = make_url(dlt_url).set(drivername="postgresql")
            runs = []
            for name in ("first load", "reload"):
                _quiet(args)
                print(f"dlt {name} ...", flush=True)
                run = await asyncio.to_thread(
                    run_dlt,
                    dlt_python,
                    name,
                    base,
                    dlt_credentials.render_as_string(hide_password=False),
                    tmpdir / "dlt",
                    args.records,
                    dlt_meter,
                    args.timeout,
                )
                run["counted_rows"], run["counted_ids"] = await count_dlt_rows(dlt_url)
                runs.append(run)
            dlt = {"version": runs[0]["dlt_version"], "runs": runs}

        first, second = results["first sync"], results["unchanged resync"]
        compared, stamped = results["compared resync"], results["stamped resync"]
        conditional_first = results["conditional first sync"]
        conditional = results["conditional resync"]
        resync_speedup = _ratio(first.wall_seconds, second.wall_seconds)
        conditional_speedup = _ratio(first.wall_seconds, conditional.wall_seconds)
        report: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "records": args.records,
            "page_size": args.page_size,
            "pages": pages,
            "database": version,
            "machine": machine(),
            "code": code_version(),
            "upstream_ceiling": ceiling,
            "first_sync": asdict(first),
            "resync": asdict(second),
            "resync_speedup": resync_speedup,
            "stamped_resync": asdict(stamped),
            "stamped_resync_speedup": _ratio(first.wall_seconds, stamped.wall_seconds),
            "compared_resync": asdict(compared),
            "compared_resync_speedup": _ratio(first.wall_seconds, compared.wall_seconds),
            "database_ceiling": database_ceiling,
            "first_sync_share": {
                name.removesuffix("_seconds"): _ratio(seconds, first.wall_seconds)
                for name, seconds in database_ceiling.items()
            },
            "conditional_first_sync": asdict(conditional_first),
            "conditional_resync": asdict(conditional),
            "conditional_speedup": conditional_speedup,
            "conditional_speedup_vs_own_first_sync": _ratio(
                conditional_first.wall_seconds, conditional.wall_seconds
            ),
            # The same ratios on the service's own clock (created -> finished): without
            # the poll's overshoot (`poll_interval`: up to 5% of a run).
            "service_clock_speedup": {
                name: _ratio(_service_seconds(first), _service_seconds(result))
                for name, result in (("stamped", stamped), ("conditional", conditional))
            },
            "worker_rss_idle_mib": _mib(idle_rss),
            "worker_rss_peak_mib": _mib(peak_rss),
            "records_in_table": in_table,
            "conditional_records_in_table": in_conditional,
            "profiled": bool(args.profile),
            "what_if": args.what_if,
            "dlt": dlt,
            "targets": {
                "first_sync_records_per_second": _target(
                    first.records_per_second, TARGETS["first_sync_records_per_second"]
                ),
                "resync_speedup": _target(resync_speedup, TARGETS["resync_speedup"]),
                "conditional_speedup": _target(conditional_speedup, TARGETS["conditional_speedup"]),
            },
            "disturbed": any(result.disturbed for result in results.values())
            or any(run["disturbed"] for run in (dlt or {}).get("runs", [])),
        }
        report["side_by_side"] = side_by_side(report)
        problems = check(report, args.records)
        report["ok"] = not problems
        report["problems"] = problems
        print_report(report)
        if report["disturbed"]:
            print(
                "warning: other processes used the CPU during a run (see `other`); "
                "the figures are suspect",
                file=sys.stderr,
            )
        for result in results.values():
            print_profile(result)
        if args.py_spy:
            for name in BACKSYNC_RUNS:
                print_py_spy(args.py_spy / f"{name.replace(' ', '-')}.txt", name)
        return report
    except BaseException:
        if worker is not None and worker_log.exists():
            tail = worker_log.read_text(errors="replace")[-4000:]
            if tail.strip():
                print(f"--- worker log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        stop_process(worker)
        stop_process(upstream)
        if admin_url is not None:
            for name in databases:
                with contextlib.suppress(Exception):
                    await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmpdir, ignore_errors=True)


async def _stamping(base: str, *, on: bool) -> None:
    """Turn the upstream's per-response envelope stamp on or off (`bench.upstream`)."""
    async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
        response = await (client.put if on else client.delete)(STAMP_PATH)
        response.raise_for_status()


async def _patch_params(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str, params: dict[str, str]
) -> None:
    response = await client.patch(
        f"/v1/tasks/{task_id}",
        json={"source": {"params": params}},
        headers={**auth, "Content-Type": "application/merge-patch+json"},
    )
    if response.status_code != 200:
        raise BenchError(f"patching the task: {response.status_code} {response.text}")


def check(report: dict[str, Any], records: int) -> list[str]:
    """Correctness only: the speed targets are reported, not enforced."""
    problems = []
    expectations = (
        (report["first_sync"], "inserted"),
        (report["resync"], "unchanged"),
        (report["stamped_resync"], "unchanged"),
        (report["compared_resync"], "unchanged"),
        (report["conditional_first_sync"], "inserted"),
    )
    for run, field_name in expectations:
        if run["status"] != "succeeded":
            problems.append(f"{run['name']}: {run['status']} ({run['error']})")
        expected = {"inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0, field_name: records}
        got = {name: run["stats"][name] for name in expected}
        if got != expected:
            problems.append(f"{run['name']}: expected {expected}, got {got}")
    conditional = report["conditional_resync"]
    if conditional["status"] != "succeeded":
        problems.append(f"conditional resync: {conditional['status']} ({conditional['error']})")
    stats = conditional["stats"]
    expected = {"pages": report["pages"], "not_modified": report["pages"], "inserted": 0}
    expected["updated"] = 0
    got = {name: stats[name] for name in expected}
    if got != expected:
        problems.append(f"conditional resync: expected {expected}, got {got}")
    for field_name in ("records_in_table", "conditional_records_in_table"):
        if report[field_name] != records:
            problems.append(f"{field_name}: {report[field_name]} records, expected {records}")
    for run in (report.get("dlt") or {}).get("runs", []):
        counted = (run["counted_rows"], run["counted_ids"], run["rows_in_table"])
        if counted != (records, records, records):
            problems.append(
                f"dlt {run['name']}: {run['counted_rows']} rows / {run['counted_ids']} ids "
                f"in the table (script saw {run['rows_in_table']}), expected {records}"
            )
        if run["has_failed_jobs"]:
            problems.append(f"dlt {run['name']}: failed load jobs")
    return problems


def code_version() -> dict[str, Any]:
    """The commit measured, and how many files differed from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        return {}
    return {"commit": commit, "modified_files": len(status.splitlines())}


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description="End-to-end ingest benchmark for Backsync."
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument(
        "--warmup-records",
        type=int,
        default=WARMUP_RECORDS,
        help="records of a first sync run before anything is measured (0: none)",
    )
    add_server_arguments(parser, BENCH_DB)
    parser.add_argument("--timeout", type=float, default=600, help="per run, seconds")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        metavar="SECONDS",
        help="before each run, wait up to this long for the machine to be idle (0: don't)",
    )
    parser.add_argument("--profile", action="store_true", help="per-stage timers in the worker")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="sample the worker with py-spy during each run; raw stacks go to DIR",
    )
    parser.add_argument(
        "--what-if",
        action="append",
        default=[],
        choices=sorted(WHAT_IFS),
        help="measure a change without making it (repeatable; implies --profile): "
        "gc-threshold (100000,50,1000 after the worker's own GC setup), gc-default (CPython's "
        "GC defaults, nothing frozen), analyze (ANALYZE after each first sync, untimed; "
        "PostgreSQL). (gc-freeze, no-pre-ping, prefetch and drop-record-fk are what the "
        "product does now: no longer options)",
    )
    parser.add_argument(
        "--with-dlt",
        action="store_true",
        help="also run dlt's rest_api source (own venv bench/.work/venv-dlt, made once from "
        "bench/requirements-dlt.txt) on the same upstream and server; PostgreSQL only",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the whole benchmark this many times; prints each round's ratios and their"
        " medians, which the targets are judged on (the machine's pace drifts)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.records < 1 or args.page_size < 1 or args.rounds < 1:
        parser.error("--records, --page-size and --rounds must be positive")
    if not args.database_name.startswith(BENCH_DB):
        parser.error(f"--database-name must start with {BENCH_DB} (it is dropped)")
    if args.what_if:
        args.profile = True
        if "analyze" in args.what_if and args.database_url.startswith("sqlite"):
            parser.error("--what-if analyze needs PostgreSQL")
    if args.with_dlt and args.database_url.startswith("sqlite"):
        parser.error("--with-dlt needs PostgreSQL")
    return args


def run_and_write(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
) -> dict[str, Any] | None:
    """Run a benchmark, write its report to `args.output` and print its problems;
    None when it could not run at all."""
    try:
        report: dict[str, Any] = asyncio.run(run(args))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return None
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}")
    for problem in report["problems"]:
        print(f"FAILED: {problem}", file=sys.stderr)
    return report


ROUND_FIGURES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "first sync s": lambda r: r["first_sync"]["wall_seconds"],
    "% of upsert": lambda r: _percent(r["first_sync_share"].get("upsert")),
    "% of COPY": lambda r: _percent(r["first_sync_share"].get("copy")),
    "unchanged x": lambda r: r["resync_speedup"],
    "stamped x": lambda r: r["stamped_resync_speedup"],
    "compared x": lambda r: r["compared_resync_speedup"],
    "304 x": lambda r: r["conditional_speedup"],
    "304 x service": lambda r: r["service_clock_speedup"]["conditional"],
}
"""Each round's figures in the summary of `--rounds` (`rounds_summary`): targets are
judged on their medians."""


def _percent(share: float | None) -> float | None:
    return None if share is None else round(100 * share, 1)


def rounds_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The last round's report, with every round's figures and their medians.

    Why rounds: on a shared 2-core machine the same run's time moved by ±20% within
    minutes (the database's own upsert of the same rows took 1.1-2.0 s in one hour,
    session 12), more than the effects measured. Each round is a whole benchmark (fresh
    database, worker and upstream) with the ceilings right after its first sync, so each
    ratio compares neighbours in time; the median of the rounds' ratios is what the
    targets are judged on."""
    rounds = [{name: get(report) for name, get in ROUND_FIGURES.items()} for report in reports]
    medians: dict[str, float] = {}
    for name in ROUND_FIGURES:
        values = [value for r in rounds if (value := r[name]) is not None]
        if values:
            medians[name] = round(statistics.median(values), 3)
    summary = dict(reports[-1])
    summary["rounds"], summary["medians"] = rounds, medians
    summary["problems"] = [problem for report in reports for problem in report["problems"]]
    summary["ok"] = not summary["problems"]
    summary["disturbed"] = any(report["disturbed"] for report in reports)
    return summary


def print_rounds(summary: dict[str, Any]) -> None:
    names = [name for name in ROUND_FIGURES if name in summary["medians"]]
    print(f"\n{len(summary['rounds'])} rounds ({summary['records']:,} records)")
    print(f"  {'round':<8}" + "".join(f"{name:>15}" for name in names))
    for number, figures in enumerate(summary["rounds"], 1):
        cells = ("-" if figures[name] is None else figures[name] for name in names)
        print(f"  {number:<8}" + "".join(f"{cell:>15}" for cell in cells))
    print(f"  {'median':<8}" + "".join(f"{summary['medians'][name]:>15}" for name in names))
    medians = summary["medians"]
    share = 30 if "SQLite" in summary["database"] else 100  # issue 13, items 3 and 4
    print(
        f"  targets, on the medians: first sync >= {share}% of the batched upsert"
        f" ({medians.get('% of upsert', '-')}%), 304 resync >= 10x"
        f" ({medians.get('304 x', '-')}x), stamped resync >= 3x"
        f" ({medians.get('stamped x', '-')}x)"
    )


async def bench_rounds(args: argparse.Namespace) -> dict[str, Any]:
    """`bench` `args.rounds` times; with more than one, their figures side by side."""
    reports = []
    for number in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"\n=== round {number} of {args.rounds} ===", flush=True)
        reports.append(await bench(args))
    if len(reports) == 1:
        return reports[0]
    summary = rounds_summary(reports)
    print_rounds(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    report = run_and_write(parse_args(argv), bench_rounds)
    return 1 if report is None or report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
