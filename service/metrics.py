"""Prometheus metrics: every metric a Backsync process counts, in one registry.

Each process counts what it does itself: the worker its runs, pages, upstream requests,
budget waits, reconciler re-sends, lease takeovers and scheduler slots; an API process
its dry runs' upstream requests. The worker serves its own on
`BACKSYNC_WORKER_METRICS_PORT` (`serve_worker_metrics`), the API on `GET /metrics`
(`service.ops.metrics`), which also reports what only the database knows — queue depth,
the oldest queued run, scheduler lag — read when it is scraped, not counted per run
(several workers would each report a part of a queue they share).

Counting is on the run's hot path (`bench/concurrency.py` measures the worker's CPU per
run), so what is counted per page or request uses label children resolved once (`PAGE`,
`RECORDS`) or a counter's `labels()` lookup; a run's records are counted once, at its
end, from the totals its last statement already returns.

Every name starts with `backsync_`; the README ("Metrics") lists them all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest, start_http_server

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format every scraper reads."""

REGISTRY = CollectorRegistry(auto_describe=True)
"""Backsync's own metrics only (not prometheus_client's global registry): every name
exported is `backsync_`-prefixed, the process's CPU and memory included."""
ProcessCollector(namespace="backsync", registry=REGISTRY)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

RUNS_FINISHED = Counter(
    "backsync_runs_finished_total",
    "Runs that ended, by final status and error code (empty when it succeeded)",
    ["status", "error_code"],
    registry=REGISTRY,
)
RUN_RETRIES = Counter(
    "backsync_run_retries_total",
    "Attempts that failed and will be tried again later, by error code",
    ["error_code"],
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "backsync_run_duration_seconds",
    "From a run's first start to its end (retries' waits included), by final status",
    ["status"],
    buckets=_RUN_BUCKETS,
    registry=REGISTRY,
)
_RECORDS = Counter(
    "backsync_records_total",
    "Records of ended runs, by outcome: inserted, updated, unchanged, rejected, deleted",
    ["outcome"],
    registry=REGISTRY,
)
RECORD_OUTCOMES = ("inserted", "updated", "unchanged", "rejected", "deleted")
RECORDS = {outcome: _RECORDS.labels(outcome) for outcome in RECORD_OUTCOMES}
_PAGES = Counter(
    "backsync_pages_total",
    "Pages fetched by runs: decoded (a body read), identical (the stored bytes, not"
    " decoded), not_modified (a 304)",
    ["outcome"],
    registry=REGISTRY,
)
PAGE = {outcome: _PAGES.labels(outcome) for outcome in ("decoded", "identical", "not_modified")}
UPSTREAM_REQUESTS = Counter(
    "backsync_upstream_requests_total",
    "Requests sent upstream, by host:port and HTTP status (error: no answer, a transport"
    " failure; cancelled: cut short, by a timeout or a prediction that was dropped)",
    ["host", "status"],
    registry=REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    "backsync_upstream_request_duration_seconds",
    "An upstream request from its send to its body read, by host:port",
    ["host"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
HOLDS = Counter(
    "backsync_upstream_holds_total",
    "Retry-After holds set on a host after a 429 or 503 (every task on it waits)",
    ["host"],
    registry=REGISTRY,
)
BUDGET_WAITS = Counter(
    "backsync_upstream_budget_waits_total",
    "Requests that waited for their host's budget: reason hold (a Retry-After) or rate"
    " (limits.requests_per_second)",
    ["host", "reason"],
    registry=REGISTRY,
)
BUDGET_WAIT_SECONDS = Counter(
    "backsync_upstream_budget_wait_seconds_total",
    "Seconds requests slept for their host's budget, by reason",
    ["host", "reason"],
    registry=REGISTRY,
)
BUDGET_REFUSALS = Counter(
    "backsync_upstream_budget_refusals_total",
    "Requests whose wait would pass BACKSYNC_UPSTREAM_BUDGET_MAX_WAIT_SECONDS: the attempt"
    " ended as upstream_held, by reason",
    ["host", "reason"],
    registry=REGISTRY,
)
_RESENT = Counter(
    "backsync_reconciler_resent_total",
    "Runs the reconciler sent to Redis again (their job was not there), by reason: queued"
    " (lost job), retrying (lost deferred retry), lease_expired (a worker stopped renewing)",
    ["reason"],
    registry=REGISTRY,
)
RESENT = {reason: _RESENT.labels(reason) for reason in ("queued", "retrying", "lease_expired")}
LEASE_TAKEOVERS = Counter(
    "backsync_lease_takeovers_total",
    "Runs this worker claimed from another worker whose lease had expired",
    registry=REGISTRY,
)
LEASES_LOST = Counter(
    "backsync_leases_lost_total",
    "Runs this worker stopped because their lease was no longer its own",
    registry=REGISTRY,
)
SCHEDULER_DELAY = Histogram(
    "backsync_scheduler_slot_delay_seconds",
    "How late each schedule slot was claimed, after its time",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)


def host_label(url: httpx.URL) -> str:
    """`host:port` of a request, as its budget names it (one origin server)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    host = url.host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_ended(
    status: str, error_code: str | None, seconds: float, totals: Mapping[str, Any]
) -> None:
    """Count a run that ended (`totals`: its counters over every attempt)."""
    RUNS_FINISHED.labels(status, error_code or "").inc()
    RUN_DURATION.labels(status).observe(seconds)
    for outcome, counter in RECORDS.items():
        if amount := totals.get(outcome):
            counter.inc(amount)


def scheduler_slots(due: list[datetime], now: datetime) -> None:
    for slot in due:
        SCHEDULER_DELAY.observe(max(0.0, (now - slot).total_seconds()))


def exposition() -> bytes:
    """This process's metrics in the Prometheus text format."""
    return generate_latest(REGISTRY)


class WorkerMetricsServer:
    """The worker's `/metrics` (any path answers it: prometheus_client's server), in a
    thread of its own, so a scrape never waits for the worker's event loop."""

    def __init__(self, host: str, port: int) -> None:
        self.server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        log.info("worker metrics on http://%s:%s/metrics", host, self.port)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
