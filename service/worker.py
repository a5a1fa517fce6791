"""The worker process: builds what jobs share (engine, HTTP client, secrets) once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.config import Settings
from service.crypto import SecretBox
from service.db import create_engine, create_sessionmaker
from service.http_client import create_upstream_client
from service.queue import build_worker
from service.runs.jobs import sync_run
from service.runs.runner import RunnerDeps

log = logging.getLogger(__name__)


def make_worker(settings: Settings, *, burst: bool = False, handle_signals: bool = True) -> Any:
    async def startup(ctx: dict[str, Any]) -> None:
        engine = create_engine(settings.database_url, pool_size=max(5, settings.worker_max_jobs // 2))
        ctx["engine"] = engine
        ctx["deps"] = RunnerDeps(
            sessionmaker=create_sessionmaker(engine),
            http=create_upstream_client(settings),
            secrets=SecretBox(settings.secret_keys),
        )
        log.info("worker ready (max_jobs=%s)", settings.worker_max_jobs)

    async def shutdown(ctx: dict[str, Any]) -> None:
        deps: RunnerDeps | None = ctx.get("deps")
        if deps is not None:
            await deps.http.aclose()
        if "engine" in ctx:
            await ctx["engine"].dispose()

    return build_worker(
        settings, [sync_run], startup, shutdown, burst=burst, handle_signals=handle_signals
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
            await worker.close()

    asyncio.run(main())
