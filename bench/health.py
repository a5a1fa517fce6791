"""Health benchmark (issue 10): a 10,000-sample batch's 202 and its ingestion, next to a
bare `COPY` of the same rows; and `GET /v1/health/daily` over a year of minute data.

    .venv/bin/python -m bench.health [--batches 8] [--year-days 365] [--daily-repeats 10]
        [--database-url postgresql://...|sqlite://] [--redis-url URL]

1. a fresh database (`backsync_bench_health` on the PostgreSQL server of
   `--database-url`, or a temp SQLite file), migrated; Redis is an embedded Valkey
   unless `--redis-url` is given; a real API process (`python -m service api`) and a
   real worker (`python -m service worker`);
2. **the year**, loaded through the real path (POST /v1/health/samples, 10,000 samples
   a batch, the worker ingesting them): one user's minute-level heart rate
   (525,600 samples) and per-minute steps from a watch and a phone whose minutes overlap
   by half (2 x 525,600). The load's own rate is reported too. The server's autovacuum
   is off on the test machine, so the bench runs `ANALYZE` once after the first batch,
   what autovacuum does on a default server within its first minute (without it the
   planner, seeing no statistics, may probe a growing table through the wrong index);
3. **the batch**: `--batches` times, a fresh 10,000-sample batch (new ids; heart rate
   and steps, another user) is POSTed: the time to the 202 as this process sees it over
   loopback HTTP, then the time from the 202 until the worker has completed it (polled
   every 5 ms), and the ingest rate that makes; each followed, in the same run, by
   **COPY**: the same rows, normalised as the worker stores them, `COPY`ed into
   `health_sample` under a third user (asyncpg's `copy_records_to_table`; same table,
   same indexes, no de-duplication);
4. **daily**: `GET /v1/health/daily` for the year, heart rate and steps: the first
   (cold: every day computed from the samples and kept in the rollup), then
   `--daily-repeats` warm ones, then after a late sample and after a deletion (the
   touched days recomputed); side by side, a bare SQL `GROUP BY` over the year's heart
   rate on PostgreSQL (per UTC+1 day: min/avg/max/count), what a summary without the
   rollup costs at the least;
5. checks: every batch completed with every sample inserted, the summaries' day counts.
   Prints the figures and writes `bench/health-results.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.concurrency import bench_settings
from bench.ingest import (
    BenchError,
    _admin,
    add_server_arguments,
    code_version,
    machine,
    print_py_spy,
    server_version,
    start_py_spy,
    stop_process,
    stop_py_spy,
    worker_env,
)
from bench.webhooks import redis_for, spread
from service.cli import _create_key
from service.config import Settings
from service.db import create_engine
from service.health.normalize import Normalized, normalize_all
from service.health.writer import Write
from service.health.writer.postgres import COPIED, copy_row
from service.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "health-results.json"
BENCH_DB = "backsync_bench_health"
YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)
BATCH = 10_000
TARGETS = {"accepted_ms": 250, "ingest_per_second": 50_000, "daily_year_ms": 200}


# ---- the samples ----------------------------------------------------------------------


def year_samples(days: int) -> Iterator[dict[str, Any]]:
    """A year of one user's minutes: heart rate, the watch's steps, the phone's steps
    (the phone's minutes start 30 s after the watch's: half of each overlaps)."""
    for minute in range(days * 1440):
        at = YEAR_START + timedelta(minutes=minute)
        yield {
            "id": f"hr{minute}",
            "source": "watch",
            "type": "heart_rate",
            "value": 55 + minute % 60,
            "unit": "bpm",
            "start": at.isoformat(),
            "tz_offset_minutes": 60,
        }
        for source, shift in (("watch", 0), ("phone", 30)):
            start = at + timedelta(seconds=shift)
            yield {
                "id": f"{source}{minute}",
                "source": source,
                "type": "steps",
                "value": minute % 90,
                "unit": "count",
                "start": start.isoformat(),
                "end": (start + timedelta(seconds=60)).isoformat(),
                "timezone": "Europe/Berlin",
            }


def batch_samples(n: int) -> list[dict[str, Any]]:
    """Batch `n`: 10,000 new samples, heart rate and steps alternating (a phone's
    upload of a week's minutes)."""
    base = YEAR_START + timedelta(days=30 + n % 40 * 7)
    samples = []
    for i in range(BATCH):
        at = (base + timedelta(minutes=i)).isoformat()
        if i % 2:
            samples.append(
                {
                    "id": f"b{n}-{i}",
                    "source": "watch",
                    "type": "heart_rate",
                    "value": 60 + i % 50,
                    "unit": "bpm",
                    "start": at,
                    "tz_offset_minutes": 60,
                    "device": "Watch7,1",
                    "recording_method": "automatic",
                }
            )
        else:
            samples.append(
                {
                    "id": f"b{n}-{i}",
                    "source": "phone",
                    "type": "steps",
                    "value": i % 120,
                    "unit": "count",
                    "start": at,
                    "end": (base + timedelta(minutes=i, seconds=59)).isoformat(),
                    "timezone": "Europe/Berlin",
                    "modified_at": at,
                }
            )
    return samples


def chunks(samples: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(settings: Settings, command: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service", command],
            cwd=ROOT,
            env=worker_env(settings)
            | {"BACKSYNC_HEALTH_INGEST_CHUNK": str(settings.health_ingest_chunk)}
            | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_ready(http: httpx.AsyncClient, api: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if api.poll() is not None:
            raise BenchError("the API process exited")
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get("/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise BenchError("the API does not answer /readyz")


# ---- the phases -----------------------------------------------------------------------


class Client:
    def __init__(self, http: httpx.AsyncClient, key: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def post(self, user: str, samples: list[dict[str, Any]]) -> tuple[str, float]:
        body = orjson.dumps({"user_id": user, "samples": samples})
        started = time.perf_counter()
        response = await self.http.post("/v1/health/samples", content=body, headers=self.headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 202:
            raise BenchError(f"POST answered {response.status_code}: {response.text[:300]}")
        answer = response.json()
        if answer["rejected"]:
            raise BenchError(f"rejected: {answer['rejected'][:3]}")
        return str(answer["batch_id"]), elapsed

    async def wait(self, batch_id: str, poll: float = 0.005) -> dict[str, Any]:
        while True:
            response = await self.http.get(f"/v1/health/batches/{batch_id}", headers=self.headers)
            if response.status_code != 200:
                answer = f"{response.status_code}: {response.text[:300]}"
                raise BenchError(f"GET batch answered {answer}")
            batch: dict[str, Any] = response.json()
            if batch["status"] != "pending":
                return batch
            await asyncio.sleep(poll)

    async def daily(self, user: str, type_: str, first: str, last: str) -> tuple[float, int]:
        params = {"user_id": user, "type": type_, "start": first, "end": last}
        started = time.perf_counter()
        response = await self.http.get("/v1/health/daily", params=params, headers=self.headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise BenchError(f"daily answered {response.status_code}: {response.text[:300]}")
        return elapsed, len(response.json()["days"])


async def analyze(url: str, tries: int = 5) -> None:
    """ANALYZE health_sample (retried: the shared server may be out of connections)."""
    for attempt in range(tries):
        try:
            return await _analyze(url)
        except Exception:
            if attempt == tries - 1:
                raise
            await asyncio.sleep(2)


async def _analyze(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("ANALYZE health_sample"))
    finally:
        await engine.dispose()


async def load_year(client: Client, url: str, days: int, in_flight: int = 3) -> dict[str, Any]:
    """The year through the real path, at most `in_flight` batches pending at once."""
    started = time.perf_counter()
    pending: list[str] = []
    posted = accepted_s = 0.0
    count = 0
    for n, chunk in enumerate(chunks(year_samples(days), BATCH)):
        batch_id, seconds = await client.post("year", chunk)
        accepted_s += seconds
        posted += 1
        count += len(chunk)
        pending.append(batch_id)
        if n == 0:
            await client.wait(batch_id)
            await analyze(url)
        while len(pending) >= in_flight:
            done = await client.wait(pending.pop(0), poll=0.05)
            if done["status"] != "completed":
                raise BenchError(f"year batch failed: {done}")
    for batch_id in pending:
        await client.wait(batch_id, poll=0.05)
    elapsed = time.perf_counter() - started
    return {
        "samples": count,
        "batches": int(posted),
        "seconds": round(elapsed, 1),
        "per_second": round(count / elapsed),
        "mean_accepted_ms": round(accepted_s * 1000 / posted, 1),
    }


def copy_rows(samples: list[Normalized], user: str, tenant: str, seq: int) -> list[tuple[Any, ...]]:
    """The rows the worker would store, as its `COPY` of new samples builds them."""
    now = datetime.now(UTC)
    return [
        copy_row(tenant, user, Write(sample, seq + n, new=True), now)
        for n, sample in enumerate(samples, start=1)
    ]


async def copy_peer(dsn: str, rows: list[tuple[Any, ...]]) -> float:
    """Seconds to COPY `rows` into health_sample in one transaction (connect excluded)."""
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        async with connection.transaction():
            await connection.copy_records_to_table("health_sample", records=rows, columns=COPIED)
        return time.perf_counter() - started
    finally:
        await connection.close()


async def phase_batches(client: Client, tenant: str, dsn: str | None, count: int) -> dict[str, Any]:
    accepted_ms: list[float] = []
    ingest_s: list[float] = []
    total_s: list[float] = []
    copy_s: list[float] = []
    checks: list[str] = []
    for n in range(count):
        samples = batch_samples(n)
        batch_id, seconds = await client.post("batch", samples)
        started = time.perf_counter()
        batch = await client.wait(batch_id)
        ingest_s.append(time.perf_counter() - started)
        total_s.append(ingest_s[-1] + seconds)
        accepted_ms.append(seconds * 1000)
        if batch["status"] != "completed" or batch["inserted"] != BATCH:
            checks.append(f"batch {n}: {batch['status']}, {batch['inserted']} inserted")
        if dsn is not None:
            normalised, _ = normalize_all(samples, "copy", datetime.now(UTC))
            copy_s.append(await copy_peer(dsn, copy_rows(normalised, "copy", tenant, n * BATCH)))
    rates = [BATCH / s for s in ingest_s]
    report: dict[str, Any] = {
        "batches": count,
        "accepted_ms": spread(accepted_ms),
        "accepted_to_completed_ms": spread([s * 1000 for s in ingest_s]),
        "post_to_completed_ms": spread([s * 1000 for s in total_s]),
        "ingest_per_second": {
            "median": round(statistics.median(rates)),
            "min": round(min(rates)),
            "max": round(max(rates)),
        },
        "checks": checks,
    }
    if copy_s:
        copy_rates = [BATCH / s for s in copy_s]
        report["copy_ms"] = spread([s * 1000 for s in copy_s])
        report["copy_per_second"] = {
            "median": round(statistics.median(copy_rates)),
            "min": round(min(copy_rates)),
            "max": round(max(copy_rates)),
        }
        report["ratio_to_copy"] = round(statistics.median(rates) / statistics.median(copy_rates), 3)
    return report


async def sql_group_by(url: str, tenant: str, first: datetime, last: datetime) -> float:
    """A bare GROUP BY over the year's heart rate: the least a rollup-free summary costs."""
    engine = create_engine(url)
    sql = text(
        "SELECT (start_at + interval '1 hour')::date AS day, min(value), avg(value),"
        " max(value), count(*) FROM health_sample WHERE tenant_id = :t AND user_id = 'year'"
        " AND type = 'heart_rate' AND start_at >= :a AND start_at < :b AND NOT deleted"
        " GROUP BY 1"
    )
    try:
        async with engine.connect() as connection:
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                (await connection.execute(sql, {"t": tenant, "a": first, "b": last})).all()
                best = min(best, time.perf_counter() - started)
            return best
    finally:
        await engine.dispose()


async def phase_daily(
    client: Client, url: str, tenant: str, days: int, repeats: int
) -> dict[str, Any]:
    first = YEAR_START.date().isoformat()
    last = (YEAR_START + timedelta(days=days - 1)).date().isoformat()
    report: dict[str, Any] = {}
    for type_ in ("heart_rate", "steps"):
        cold, n_days = await client.daily("year", type_, first, last)
        warm = [(await client.daily("year", type_, first, last))[0] for _ in range(repeats)]
        report[type_] = {
            "days": n_days,
            "cold_ms": round(cold * 1000, 1),
            "warm_ms": spread([s * 1000 for s in warm]),
        }
    mid = YEAR_START + timedelta(days=days // 2, hours=12)
    late = {
        "id": "late-1",
        "source": "phone",
        "type": "steps",
        "value": 500,
        "unit": "count",
        "start": mid.isoformat(),
        "end": (mid + timedelta(minutes=10)).isoformat(),
        "timezone": "Europe/Berlin",
    }
    for name, sample in (
        ("after_late_sample_ms", late),
        ("after_deletion_ms", {"id": "late-1", "source": "phone", "deleted": True}),
    ):
        batch_id, _ = await client.post("year", [sample])
        await client.wait(batch_id)
        seconds, _ = await client.daily("year", "steps", first, last)
        report["steps"][name] = round(seconds * 1000, 1)
    if make_url(url).get_backend_name() == "postgresql":
        end = YEAR_START + timedelta(days=days)
        report["sql_group_by_heart_rate_ms"] = round(
            await sql_group_by(url, tenant, YEAR_START, end) * 1000, 1
        )
    return report


async def tenant_of(url: str) -> str:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return str((await connection.execute(text("SELECT id FROM tenant"))).scalar_one())
    finally:
        await engine.dispose()


async def bench(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    tmpdir = Path(tempfile.mkdtemp(prefix="backsync-bench-health-"))
    args.redis_url = redis_url
    settings, admin_url = bench_settings(args, tmpdir, name="health")
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if admin_url is not None:
            await _admin(
                admin_url,
                f'DROP DATABASE IF EXISTS "{args.database_name}" WITH (FORCE)',
                f'CREATE DATABASE "{args.database_name}"',
            )
        await upgrade(settings.database_url)
        key = await _create_key(settings, "bench-health", None)
        tenant = await tenant_of(settings.database_url)
        api_env = {
            "BACKSYNC_HOST": "127.0.0.1",
            "BACKSYNC_PORT": str(port),
            # The bench polls a batch every 5 ms: that is how it measures, not what.
            "BACKSYNC_API_RATE_PER_SECOND": "0",
        }
        processes.append(start(settings, "api", tmpdir / "api.log", **api_env))
        processes.append(start(settings, "worker", tmpdir / "worker.log"))
        dsn: str | None = None
        if admin_url is not None:
            plain = make_url(settings.database_url).set(drivername="postgresql")
            dsn = plain.render_as_string(hide_password=False)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            await wait_ready(http, processes[0])
            client = Client(http, key)
            report: dict[str, Any] = {}
            if not args.skip_year:
                year = await load_year(client, settings.database_url, args.year_days)
                report["year_load"] = year
            warm_up, _ = await client.post("batch", batch_samples(999))  # dropped
            await client.wait(warm_up)
            await analyze(settings.database_url)  # what autovacuum would have done by now
            spies = []
            if args.py_spy is not None:
                spies = [
                    start_py_spy(process.pid, args.py_spy, name)
                    for process, name in zip(processes, ("api", "worker"), strict=True)
                ]
            report["batch"] = await phase_batches(client, tenant, dsn, args.batches)
            for spy in spies:
                stop_py_spy(spy)
            if not args.skip_year:
                report["daily"] = await phase_daily(
                    client, settings.database_url, tenant, args.year_days, args.daily_repeats
                )
        report["targets"] = TARGETS
        report["setup"] = {
            "database": await server_version(settings.database_url),
            "chunk": settings.health_ingest_chunk,
            "code": code_version(),
            "machine": machine(),
            "logs": str(tmpdir),
        }
        return report
    finally:
        for process in reversed(processes):
            stop_process(process)
        if admin_url is not None and not args.keep_database:
            with contextlib.suppress(Exception):
                await _admin(
                    admin_url, f'DROP DATABASE IF EXISTS "{args.database_name}" WITH (FORCE)'
                )


def print_report(report: dict[str, Any]) -> None:
    setup = report["setup"]
    print(f"setup: {setup['database']}, chunk {setup['chunk']}, commit {setup['code']}")
    year = report.get("year_load")
    if year:
        print(
            f"year load (real API + worker): {year['samples']:,} samples in {year['batches']} "
            f"batches, {year['seconds']} s = {year['per_second']:,}/s, "
            f"mean 202 {year['mean_accepted_ms']} ms"
        )
    batch = report["batch"]
    print(f"10,000-sample batch x{batch['batches']}:")
    print(f"  POST -> 202 (ms):          {batch['accepted_ms']}")
    print(f"  202 -> completed (ms):     {batch['accepted_to_completed_ms']}")
    print(f"  POST -> completed (ms):    {batch['post_to_completed_ms']}")
    print(f"  ingest rate (samples/s, 202 -> completed): {batch['ingest_per_second']}")
    if "copy_ms" in batch:
        print(f"  bare COPY, same rows (ms): {batch['copy_ms']}")
        print(f"  COPY rate (samples/s):     {batch['copy_per_second']}")
        print(f"  service / COPY:            {batch['ratio_to_copy']:.0%}")
    daily = report.get("daily", {})
    for type_ in ("heart_rate", "steps") if daily else ():
        row = daily[type_]
        extra = {k: v for k, v in row.items() if k.startswith("after_")}
        print(
            f"daily {type_}, {row['days']} days: cold {row['cold_ms']} ms, "
            f"warm {row['warm_ms']} {extra or ''}"
        )
    if "sql_group_by_heart_rate_ms" in daily:
        print(
            f"  peer: bare SQL GROUP BY over the year's heart rate: "
            f"{daily['sql_group_by_heart_rate_ms']} ms"
        )
    if batch["checks"]:
        print(f"checks FAILED: {batch['checks']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--year-days", type=int, default=365)
    parser.add_argument("--daily-repeats", type=int, default=10)
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument("--skip-year", action="store_true", help="batches only")
    parser.add_argument(
        "--py-spy", type=Path, default=None, help="record the API and the worker during the batches"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    add_server_arguments(parser, BENCH_DB)
    parser.set_defaults(redis_url=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with redis_for(args.redis_url) as redis_url:
        report = asyncio.run(bench(args, redis_url))
    print_report(report)
    if args.py_spy is not None:
        for name in ("api", "worker"):
            print_py_spy(args.py_spy / f"{name}.txt", name)
    args.output.write_text(json.dumps(report, indent=2, default=str))
    return 1 if report["batch"]["checks"] else 0


if __name__ == "__main__":
    sys.exit(main())
