"""Webhook delivery benchmark: deliveries per second, and the delay from an event's
commit to its first delivery (issue 9's target: p50 < 200 ms).

    .venv/bin/python -m bench.webhooks [--events 5000] [--endpoints 1] [--workers 1]
        [--latency-events 200] [--latency-interval 0.05] [--poll-events 20]
        [--database-url postgresql://...|sqlite://] [--redis-url URL]

1. a receiver process (`--serve-receiver`: Starlette on uvicorn + httptools, one
   process) answers every POST with 204 at once and notes each delivery's `webhook-id`
   and its arrival (`time.time()`, the same clock as this process on one machine);
2. a fresh database (`backsync_bench_hooks` on the PostgreSQL server, or a temp SQLite
   file), migrated; a tenant and `--endpoints` endpoints for `["*"]`, made with the
   service's own `create`; Redis is an embedded Valkey unless `--redis-url` is given;
3. **ceiling**: a plain `httpx.AsyncClient` POSTs the same body to the same receiver,
   `--ceiling-requests` times with 1, 8 and 50 requests at once; the best rate is what
   this machine and receiver allow, measured in the same run;
4. starts `--workers` real workers (`python -m service worker`);
5. **latency**: `--latency-events` events, one per transaction, `--latency-interval`
   apart, each written with the outbox (`outbox.append`, as the ledger writes a run's
   events) and, after its commit, the Redis ring an API process sends
   (`Queue.webhooks_due`). Delay = first arrival - the moment the commit returned;
6. **poll fallback**: `--poll-events` more without the ring: what a lost ring costs
   (bounded by `BACKSYNC_WEBHOOK_POLL_SECONDS`, 1 s);
7. **throughput**: `--events` events in transactions of 100, written as fast as this
   process can, a ring after each; deliveries per second from the first commit to the
   last arrival, and the delays under that load;
8. checks: every (endpoint, event) arrived, how many arrived twice, every delivery row
   `succeeded` after one attempt; worker CPU seconds over each phase. Prints the
   figures and writes `bench/webhooks-results.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy import func, select
from sqlmodel import col

from bench.concurrency import bench_settings
from bench.ingest import (
    BenchError,
    _admin,
    add_server_arguments,
    code_version,
    machine,
    server_version,
    stop_process,
    worker_env,
)
from service.broker.embedded import embedded_redis
from service.broker.queue import Queue
from service.config import Settings
from service.crypto import SecretBox
from service.db import create_engine, create_sessionmaker, transaction
from service.migrations import upgrade
from service.models import Tenant, WebhookDelivery
from service.notifications.outbox import NewEvent, append
from service.notifications.webhooks import service as webhooks
from service.notifications.webhooks.schemas import WebhookIn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "webhooks-results.json"
BENCH_DB = "backsync_bench_hooks"
TENANT = "ten_bench_hooks"
CEILING_CONCURRENCY = (1, 8, 50)
THROUGHPUT_BATCH = 100


# ---- the receiver (its own process) ---------------------------------------------------


def serve_receiver() -> None:
    """A Starlette app that notes each delivery and answers 204; prints `READY <port>`."""
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    seen: list[tuple[str, str, float]] = []

    async def hook(request: Request) -> Response:
        await request.body()
        seen.append((request.path_params["n"], request.headers.get("webhook-id", ""), time.time()))
        return Response(status_code=204)

    async def stats(_request: Request) -> Response:
        return JSONResponse(seen)

    async def reset(_request: Request) -> Response:
        seen.clear()
        return Response(status_code=204)

    app = Starlette(
        routes=[
            Route("/hook/{n}", hook, methods=["POST"]),
            Route("/stats", stats),
            Route("/reset", reset, methods=["POST"]),
        ]
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    print(f"READY {port}", flush=True)
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", http="httptools", lifespan="off"
    )


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "bench.webhooks", "--serve-receiver"]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("READY "):
        process.kill()
        raise BenchError(f"receiver did not start: {line!r}")
    base = f"http://127.0.0.1:{int(line.split()[1])}"
    for _ in range(200):  # READY is printed just before uvicorn binds
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{base}/stats", timeout=1)
            return process, base
        time.sleep(0.05)
    raise BenchError("receiver does not answer")


async def arrivals(http: httpx.AsyncClient, base: str) -> list[tuple[str, str, float]]:
    return [tuple(row) for row in (await http.get(f"{base}/stats", timeout=30)).json()]


async def wait_arrivals(
    http: httpx.AsyncClient, base: str, ids: set[str], endpoints: int, seconds: float
) -> list[tuple[str, str, float]]:
    """Every arrival so far, once each of `ids` reached every endpoint (or `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        seen = await arrivals(http, base)
        reached = {(endpoint, event_id) for endpoint, event_id, _ in seen if event_id in ids}
        if len(reached) >= len(ids) * endpoints or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


# ---- the phases -----------------------------------------------------------------------


async def ceiling(base: str, count: int) -> dict[str, Any]:
    """A plain `httpx.AsyncClient` POSTing the same kind of body to the same receiver,
    `count` times at each of `CEILING_CONCURRENCY` requests at once; the best rate is
    the ceiling (one pool of 50 connections is far slower than one of 8 here: httpcore
    re-examines its pool on every request, what the service's `ShardedTransport` avoids)."""
    body = json.dumps({"id": "evt_x", "type": "run.succeeded", "data": {"n": 1}}).encode()
    rates: dict[str, int] = {}
    for concurrency in CEILING_CONCURRENCY:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as http:
            gate = asyncio.Semaphore(concurrency)

            async def one(http: httpx.AsyncClient = http, gate: asyncio.Semaphore = gate) -> None:
                async with gate:
                    response = await http.post(f"{base}/hook/ceiling", content=body)
                    assert response.status_code == 204

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(count)))
            rates[str(concurrency)] = round(count / (time.perf_counter() - started))
        async with httpx.AsyncClient() as http:
            await http.post(f"{base}/reset")
    return {
        "requests": count,
        "per_second_by_concurrency": rates,
        "per_second": max(rates.values()),
    }


class Writer:
    """Writes events the way Backsync's writers do, and rings like an API process."""

    def __init__(self, settings: Settings, queue: Queue) -> None:
        self._engine = create_engine(settings.database_url)
        self._sessionmaker = create_sessionmaker(self._engine)
        self._queue = queue
        self.committed: dict[str, float] = {}

    async def write(self, count: int, *, ring: bool = True) -> None:
        events = [NewEvent("run.succeeded", {"n": n}) for n in range(count)]
        async with transaction(self._sessionmaker) as session:
            await append(session, TENANT, events)
        at = time.time()
        self.committed.update((event.id, at) for event in events)
        if ring:
            await self._queue.webhooks_due()

    async def close(self) -> None:
        await self._engine.dispose()


def delays_ms(
    seen: list[tuple[str, str, float]], committed: dict[str, float], ids: set[str]
) -> list[float]:
    first: dict[tuple[str, str], float] = {}
    for endpoint, event_id, at in seen:
        if event_id in ids:
            first[(endpoint, event_id)] = min(at, first.get((endpoint, event_id), at))
    return [(at - committed[event_id]) * 1000 for (_, event_id), at in first.items()]


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)

    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 1),
        "p90": pct(90),
        "p99": pct(99),
        "max": round(ordered[-1], 1),
    }


class Cpu:
    def __init__(self, pids: list[int]) -> None:
        self._processes = [psutil.Process(pid) for pid in pids]

    def seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self._processes)


async def phase_latency(
    writer: Writer, http: httpx.AsyncClient, base: str, args: argparse.Namespace, ring: bool
) -> dict[str, Any]:
    count = args.latency_events if ring else args.poll_events
    before = set(writer.committed)
    for _ in range(count):
        await writer.write(1, ring=ring)
        await asyncio.sleep(args.latency_interval if ring else 0.3)
    ids = set(writer.committed) - before
    seen = await wait_arrivals(http, base, ids, args.endpoints, 30)
    return {"events": count, "delay_ms": spread(delays_ms(seen, writer.committed, ids))}


async def phase_throughput(
    writer: Writer, http: httpx.AsyncClient, base: str, args: argparse.Namespace, cpu: Cpu
) -> dict[str, Any]:
    before = set(writer.committed)
    await http.post(f"{base}/reset")
    cpu_before = cpu.seconds()
    started = time.time()
    for _ in range(args.events // THROUGHPUT_BATCH):
        await writer.write(THROUGHPUT_BATCH)
    written = time.time() - started
    ids = set(writer.committed) - before
    seen = await wait_arrivals(http, base, ids, args.endpoints, 300)
    relevant = [row for row in seen if row[1] in ids]
    last = max(at for _, _, at in relevant)
    elapsed = last - min(writer.committed[i] for i in ids)
    return {
        "events": len(ids),
        "deliveries": len(relevant),
        "write_seconds": round(written, 3),
        "seconds": round(elapsed, 3),
        "per_second": round(len(relevant) / elapsed),
        "worker_cpu_ms_per_delivery": round((cpu.seconds() - cpu_before) * 1000 / len(relevant), 3),
        "delay_ms": spread(delays_ms(seen, writer.committed, ids)),
        "_ids": ids,
    }


async def checks(
    settings: Settings,
    http: httpx.AsyncClient,
    base: str,
    committed: dict[str, float],
    endpoints: int,
) -> dict[str, Any]:
    seen = await arrivals(http, base)
    counts = Counter((endpoint, event_id) for endpoint, event_id, _ in seen)
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(
                        col(WebhookDelivery.status), col(WebhookDelivery.attempts), func.count()
                    ).group_by(col(WebhookDelivery.status), col(WebhookDelivery.attempts))
                )
            ).all()
    finally:
        await engine.dispose()
    return {
        "missing_in_last_phase": None,
        "arrived_twice": sum(1 for n in counts.values() if n > 1),
        "delivery_rows": {f"{status}/{attempts}": n for status, attempts, n in rows},
    }


# ---- set-up and the run ---------------------------------------------------------------


async def prepare(settings: Settings, receiver: str, endpoints: int) -> None:
    await upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            session.add(Tenant(id=TENANT, name="bench-hooks"))
            await session.flush()
            box = SecretBox(settings.secret_keys)
            for n in range(endpoints):
                body = WebhookIn.model_validate({"url": f"{receiver}/hook/{n}", "events": ["*"]})
                await webhooks.create(session, box, settings, TENANT, body)
    finally:
        await engine.dispose()


def start_workers(settings: Settings, count: int, tmpdir: Path) -> list[subprocess.Popen[bytes]]:
    """`count` real workers (`python -m service worker`), logs in `tmpdir`."""
    started = []
    for n in range(count):
        with (tmpdir / f"worker-{n}.log").open("wb") as log:
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "service", "worker"],
                    cwd=ROOT,
                    env=worker_env(settings),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return started


@contextlib.contextmanager
def redis_for(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with embedded_redis() as embedded:
            yield embedded


async def bench(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    tmpdir = Path(tempfile.mkdtemp(prefix="backsync-bench-hooks-"))
    args.redis_url = redis_url
    settings, admin_url = bench_settings(args, tmpdir, name="hooks")
    receiver, base = start_receiver()
    workers: list[subprocess.Popen[bytes]] = []
    queue: Queue | None = None
    writer: Writer | None = None
    try:
        if admin_url is not None:
            await _admin(
                admin_url,
                f'DROP DATABASE IF EXISTS "{args.database_name}" WITH (FORCE)',
                f'CREATE DATABASE "{args.database_name}"',
            )
        await prepare(settings, base, args.endpoints)
        report: dict[str, Any] = {"ceiling": await ceiling(base, args.ceiling_requests)}
        async with httpx.AsyncClient(timeout=30) as http:
            workers += start_workers(settings, args.workers, tmpdir)
            await asyncio.sleep(args.startup_wait)
            queue = await Queue.connect(settings)
            writer = Writer(settings, queue)
            cpu = Cpu([worker.pid for worker in workers])
            await phase_latency(writer, http, base, args, ring=True)  # warm-up, dropped
            await http.post(f"{base}/reset")
            report["latency"] = await phase_latency(writer, http, base, args, ring=True)
            report["poll_fallback"] = await phase_latency(writer, http, base, args, ring=False)
            throughput = await phase_throughput(writer, http, base, args, cpu)
            ids = throughput.pop("_ids")
            report["throughput"] = throughput
            report["checks"] = await checks(settings, http, base, writer.committed, args.endpoints)
            seen = {(e, i) for e, i, _ in await arrivals(http, base)}
            report["checks"]["missing_in_last_phase"] = sum(
                (str(n), i) not in seen for n in range(args.endpoints) for i in ids
            )
        report["ratio_to_ceiling"] = round(
            report["throughput"]["per_second"] / report["ceiling"]["per_second"], 3
        )
        report["setup"] = {
            "database": await server_version(settings.database_url),
            "workers": args.workers,
            "endpoints": args.endpoints,
            "code": code_version(),
            "machine": machine(),
        }
        return report
    finally:
        if writer is not None:
            await writer.close()
        if queue is not None:
            await queue.close()
        for worker in workers:
            stop_process(worker)
        stop_process(receiver)
        if admin_url is not None:
            with contextlib.suppress(Exception):
                await _admin(
                    admin_url, f'DROP DATABASE IF EXISTS "{args.database_name}" WITH (FORCE)'
                )


def print_report(report: dict[str, Any]) -> None:
    ceiling_rate = report["ceiling"]["per_second"]
    throughput = report["throughput"]
    print(
        f"setup: {report['setup']['database']}, {report['setup']['workers']} worker(s), "
        f"{report['setup']['endpoints']} endpoint(s), commit {report['setup']['code']}"
    )
    by = report["ceiling"]["per_second_by_concurrency"]
    print(f"ceiling (plain httpx, best of {by} requests at once): {ceiling_rate} POST/s")
    print(
        f"throughput: {throughput['deliveries']} deliveries in {throughput['seconds']} s = "
        f"{throughput['per_second']}/s ({report['ratio_to_ceiling']:.0%} of the ceiling), "
        f"worker CPU {throughput['worker_cpu_ms_per_delivery']} ms per delivery"
    )
    print(f"  delays under load (ms): {throughput['delay_ms']}")
    print(
        f"commit -> first delivery, one event at a time, rung (ms): {report['latency']['delay_ms']}"
    )
    print(f"same, no ring: the poll fallback (ms): {report['poll_fallback']['delay_ms']}")
    print(f"checks: {report['checks']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--ceiling-requests", type=int, default=2000)
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument("--latency-interval", type=float, default=0.05)
    parser.add_argument("--poll-events", type=int, default=20)
    parser.add_argument("--startup-wait", type=float, default=3.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    add_server_arguments(parser, BENCH_DB)
    parser.set_defaults(redis_url=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_receiver:
        serve_receiver()
        return 0
    with redis_for(args.redis_url) as redis_url:
        report = asyncio.run(bench(args, redis_url))
    print_report(report)
    args.output.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
