"""`GET /metrics`: this API process's metrics and what the database says about the queue
and the schedules, in the Prometheus text format, without an API key (as scrapers
expect). `BACKSYNC_METRICS_ENABLED=false` leaves the route out (404).

The database's part is read when Prometheus scrapes (three indexed reads), not kept up
to date per run: queue depth, the wait of the longest-waiting run, active runs by status,
and, when any task has a schedule, how far the scheduler is behind. It is served by the
API only: every worker reporting it would multiply one queue by the number of workers.
A database that does not answer leaves these out (and `backsync_metrics_database_up` 0);
the scrape still succeeds.

Not in the OpenAPI document: it is for Prometheus, not for API clients (README, "Metrics").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from service import metrics
from service.db import SessionMaker
from service.dependencies import State
from service.models.types import utcnow
from service.runs.repository import QueueStats, queue_stats
from service.tasks.repository import schedule_stats

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(state: State) -> Response:
    """Prometheus metrics (text format)"""
    snapshot = await _snapshot(state["sessionmaker"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(snapshot)
    body = metrics.exposition() + generate_latest(registry)
    return Response(body, media_type=metrics.CONTENT_TYPE)


class _Snapshot(Collector):
    """The database's gauges as read for one scrape."""

    def __init__(self, queue: QueueStats | None, scheduled: int, lag: float | None) -> None:
        self.queue, self.scheduled, self.lag = queue, scheduled, lag

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "backsync_metrics_database_up",
            "1 when this scrape read the database's gauges, 0 when the database failed",
            value=int(self.queue is not None),
        )
        if self.queue is None:
            return
        queue = self.queue
        yield GaugeMetricFamily(
            "backsync_queue_depth",
            "Runs waiting for a worker now: queued, or retrying with their next attempt due",
            value=queue.waiting,
        )
        oldest = (utcnow() - queue.oldest_due).total_seconds() if queue.oldest_due else 0.0
        yield GaugeMetricFamily(
            "backsync_queue_oldest_age_seconds",
            "How long the longest-waiting of those runs has been due (0 when none waits)",
            value=max(0.0, oldest),
        )
        active = GaugeMetricFamily(
            "backsync_runs_active", "Runs queued, running or retrying", labels=["status"]
        )
        for status, count in queue.active.items():
            active.add_metric([status], count)
        yield active
        if self.scheduled:
            yield GaugeMetricFamily(
                "backsync_scheduled_tasks",
                "Tasks with a schedule and a next slot (not paused)",
                value=self.scheduled,
            )
            yield GaugeMetricFamily(
                "backsync_scheduler_lag_seconds",
                "How long the most overdue schedule slot has been due and not started"
                " (0: the scheduler is keeping up)",
                value=self.lag or 0.0,
            )


async def _snapshot(sessionmaker: SessionMaker) -> _Snapshot:
    now = utcnow()
    try:
        async with sessionmaker() as session:
            queue = await queue_stats(session, now)
            scheduled, soonest = await schedule_stats(session)
    except Exception:
        log.warning("metrics: could not read the queue from the database", exc_info=True)
        return _Snapshot(None, 0, None)
    lag = max(0.0, (now - soonest).total_seconds()) if soonest is not None else None
    return _Snapshot(queue, scheduled, lag)
