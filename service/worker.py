"""The worker process: builds what jobs share (engine, HTTP client, secrets) once, and
runs the reconciler and the scheduler beside the jobs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import socket
from typing import Any

from service.broker.budget import RedisBudget
from service.broker.queue import Queue, build_worker
from service.config import Settings
from service.crypto import SecretBox
from service.db import create_engine, create_sessionmaker
from service.health.jobs import ingest_health_batch, resend_forever
from service.http_client import create_upstream_client
from service.metrics import WorkerMetricsServer
from service.notifications.service import prune_forever
from service.notifications.webhooks import deliverer as webhooks
from service.runs.jobs import sync_run
from service.runs.ledger import ledger_for
from service.runs.recovery import reconcile_forever
from service.runs.runner import RunnerDeps
from service.runs.scheduler import Scheduler
from service.runs.scheduler import subscription as scheduler_subscription
from service.sync import BodyBudget, RequestRetry

log = logging.getLogger(__name__)


def worker_identity() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def _calm_the_garbage_collector() -> None:
    """Each page makes thousands of short-lived dicts; CPython's default thresholds then
    run full collections over the whole (long-lived) heap several times a page. Freezing
    what startup built and collecting young objects less often cut a page's CPU by ~15%
    in bench/ingest.py."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def make_worker(settings: Settings, *, burst: bool = False, handle_signals: bool = True) -> Any:
    async def startup(ctx: dict[str, Any]) -> None:
        engine = create_engine(
            # One pooled connection per concurrent job (plus a few for heartbeats and the
            # reconciler): overflow connections are opened and closed per use, and opening
            # a PostgreSQL connection costs more than the page it would serve.
            settings.database_url,
            pool_size=max(5, settings.worker_max_jobs),
            max_overflow=5,
            pre_ping=False,
        )
        sessionmaker = create_sessionmaker(engine)
        health = ctx["redis_health"]
        queue = Queue.from_pool(ctx["redis"], settings.queue_name, health)
        budget = RedisBudget(
            ctx["redis"],
            settings.redis_key_prefix,
            max_wait=settings.upstream_budget_max_wait_seconds,
            max_hold=settings.upstream_max_hold_seconds,
            health=health,
            outage_max_wait=settings.redis_outage_max_wait_seconds,
        )
        await budget.start()
        ctx["engine"] = engine
        secrets = SecretBox(settings.secret_keys)
        hooks = None if burst else webhooks.build(sessionmaker, secrets, settings)
        ctx["sessionmaker"], ctx["settings"] = sessionmaker, settings
        ctx["deps"] = RunnerDeps(
            ledger=ledger_for(
                sessionmaker,
                worker_identity(),
                settings.lease_seconds,
                settings.auto_pause_after_failures,
                settings.tenant_running_cap,
            ),
            http=create_upstream_client(settings),
            secrets=secrets,
            queue=queue,
            budget=budget,
            bodies=BodyBudget(
                settings.worker_max_inflight_bytes, max_ratio=settings.max_compression_ratio
            ),
            max_response_bytes=settings.max_response_bytes,
            request_retry=RequestRetry(
                base_delay=settings.upstream_retry_delay_seconds,
                max_delay=8 * settings.upstream_retry_delay_seconds,
            ),
            max_hold_seconds=settings.upstream_max_hold_seconds,
            **({"events_written": hooks.events_written} if hooks else {}),
        )
        if not burst:
            scheduler = Scheduler(sessionmaker, queue)
            wakeups = scheduler_subscription(settings.queue_name, ctx["redis"], scheduler)
            ctx["scheduler"] = asyncio.create_task(scheduler.run_forever(wakeups))
            ctx["reconciler"] = asyncio.create_task(
                reconcile_forever(
                    sessionmaker,
                    queue,
                    settings.reconcile_interval_seconds,
                    settings.queued_grace_seconds,
                )
            )
            assert hooks is not None
            ctx["webhooks"] = asyncio.create_task(
                hooks.run_forever(webhooks.subscription(settings.queue_name, ctx["redis"], hooks))
            )
            ctx["pruner"] = asyncio.create_task(
                prune_forever(sessionmaker, settings.event_retention_days)
            )
            ctx["health_resender"] = asyncio.create_task(
                resend_forever(
                    sessionmaker,
                    queue,
                    settings.reconcile_interval_seconds,
                    settings.queued_grace_seconds,
                )
            )
        if settings.worker_metrics_port and settings.metrics_enabled and not burst:
            ctx["metrics"] = WorkerMetricsServer(settings.host, settings.worker_metrics_port)
        _calm_the_garbage_collector()
        log.info(
            "worker ready (max_jobs=%s, tenant_max_running=%s)",
            settings.worker_max_jobs,
            settings.tenant_running_cap or "no cap",
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        for name in ("reconciler", "scheduler", "pruner", "webhooks", "health_resender"):
            loop: asyncio.Task[None] | None = ctx.get(name)
            if loop is not None:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
        served: WorkerMetricsServer | None = ctx.get("metrics")
        if served is not None:
            await asyncio.to_thread(served.close)  # waits for a scrape under way
        deps: RunnerDeps | None = ctx.get("deps")
        if deps is not None:
            await deps.http.aclose()
            if isinstance(deps.budget, RedisBudget):
                await deps.budget.close()
        if "engine" in ctx:
            await ctx["engine"].dispose()

    return build_worker(
        settings,
        [sync_run, ingest_health_batch],
        startup,
        shutdown,
        burst=burst,
        handle_signals=handle_signals,
    )


def run_worker(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM. The worker is built inside the loop so arq's signal
    handlers attach to the loop that runs it."""

    async def main() -> None:
        worker = make_worker(settings)
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            pass
        finally:
            # Runs cut short by the shutdown keep their lease until it expires; the
            # reconciler of a live worker picks them up from their checkpoint.
            with contextlib.suppress(asyncio.CancelledError):
                await worker.close()

    asyncio.run(main())
