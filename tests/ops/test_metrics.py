"""`/metrics` on the API and on a worker's port, after real runs against a real upstream;
the run-end log line."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import bindparam, text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.broker.queue import Queue
from service.config import Settings
from service.db import create_engine, create_sessionmaker
from service.logs import JsonFormatter
from service.metrics import REGISTRY
from service.models.types import UTCDateTime, utcnow
from service.runs.recovery import reconcile_once
from tests.fixtures.app import SpawnWorker, api_client, running_worker
from tests.fixtures.upstream import Upstream, cursor, free_port, make_records
from tests.helpers import create_task, http_task, sync, trigger, wait_run
from tests.runs.test_conditional import CURSOR, etagged

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: str) -> Samples:
    """Every sample of a text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(url: str, timeout: float = 15.0) -> Samples:
    """The worker's metrics, once its port answers."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            try:
                response = await http.get(url)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"{url} never answered"
                await asyncio.sleep(0.1)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def in_process(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_worker_metrics_count_runs_pages_records_and_upstream_requests_by_host(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    spawn_worker: SpawnWorker,
) -> None:
    """A worker process of its own (so its counters start at zero): a first sync, its
    304 resync, and a run that fails; then its port's `/metrics`."""
    port = free_port()
    spawn_worker(worker_metrics_port=str(port))
    worker_url = f"http://127.0.0.1:{port}/metrics"
    records = make_records(30)
    url = upstream.route("/cond", etagged(cursor(records, size=10)))  # type: ignore[arg-type]
    body = http_task(url, records_path="data", pagination=CURSOR, conditional=True)
    task = await create_task(client, auth, body)
    missing = upstream.route("/gone", lambda _r: JSONResponse({}, status_code=404))
    broken = await create_task(client, auth, http_task(missing, name="broken"))

    first = await sync(client, auth, task["id"])
    second = await sync(client, auth, task["id"])
    failed = await sync(client, auth, broken["id"])
    assert (first["status"], second["status"], failed["status"]) == ("succeeded",) * 2 + ("failed",)
    code = failed["error"]["code"]
    await asyncio.sleep(0.2)  # the last run's end is counted right after its commit
    samples = await scrape(worker_url)

    host = f"127.0.0.1:{upstream.base_url.rsplit(':', 1)[1]}"
    assert value(samples, "backsync_runs_finished_total", status="succeeded", error_code="") == 2
    assert value(samples, "backsync_runs_finished_total", status="failed", error_code=code) == 1
    assert value(samples, "backsync_run_duration_seconds_count", status="succeeded") == 2
    assert value(samples, "backsync_run_duration_seconds_count", status="failed") == 1
    assert value(samples, "backsync_pages_total", outcome="decoded") == 3
    assert value(samples, "backsync_pages_total", outcome="not_modified") == 3
    assert value(samples, "backsync_records_total", outcome="inserted") == 30
    assert value(samples, "backsync_records_total", outcome="unchanged") == 0
    assert value(samples, "backsync_upstream_requests_total", host=host, status="200") == 3
    assert value(samples, "backsync_upstream_requests_total", host=host, status="304") == 3
    assert value(samples, "backsync_upstream_requests_total", host=host, status="404") == 1
    assert value(samples, "backsync_upstream_request_duration_seconds_count", host=host) == 7
    assert value(samples, "backsync_process_cpu_seconds_total") > 0
    assert all(name.startswith("backsync_") for name, _ in samples)


async def test_api_metrics_need_no_key_and_report_the_queue_and_the_scheduler_lag(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    """No worker: a triggered run waits in the queue; a scheduled task's slot is overdue."""
    url = upstream.route("/items", cursor(make_records(3), size=10))
    waiting = await create_task(client, auth, http_task(url, records_path="data"))
    schedule = {"cron": "0 0 29 2 *", "timezone": "UTC"}
    scheduled = await create_task(
        client, auth, {**http_task(url, name="s", records_path="data"), "schedule": schedule}
    )
    response = await client.get("/metrics")
    assert response.status_code == 200
    before = parse(response.text)
    assert value(before, "backsync_queue_depth") == 0
    assert value(before, "backsync_scheduled_tasks") == 1
    assert value(before, "backsync_scheduler_lag_seconds") == 0  # its slot is years away

    await trigger(client, auth, waiting["id"])
    await _move_slot(settings, scheduled["id"], utcnow() - timedelta(seconds=30))
    await asyncio.sleep(0.2)
    response = await client.get("/metrics")  # no Authorization header

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = parse(response.text)
    assert value(after, "backsync_metrics_database_up") == 1
    assert value(after, "backsync_queue_depth") == 1
    assert 0.1 <= value(after, "backsync_queue_oldest_age_seconds") < 60
    assert value(after, "backsync_runs_active", status="queued") == 1
    assert value(after, "backsync_runs_active", status="running") == 0
    assert 30 <= value(after, "backsync_scheduler_lag_seconds") < 90
    assert all(name.startswith("backsync_") for name, _ in after)


async def test_no_scheduler_lag_is_reported_without_schedules(client: httpx.AsyncClient) -> None:
    samples = parse((await client.get("/metrics")).text)
    assert value(samples, "backsync_queue_depth") == 0
    names = {name for name, _ in samples}
    assert not names & {"backsync_scheduler_lag_seconds", "backsync_scheduled_tasks"}


async def test_metrics_can_be_turned_off(settings: Settings) -> None:
    async with api_client(settings.model_copy(update={"metrics_enabled": False})) as http:
        response = await http.get("/metrics")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_metrics_are_not_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


async def test_a_run_ends_with_one_structured_log_line(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    worker: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ok = await create_task(
        client,
        auth,
        http_task(
            upstream.route("/ok", cursor(make_records(5), size=10)), "ok", records_path="data"
        ),
    )
    gone = upstream.route("/gone", lambda _r: JSONResponse({}, status_code=404))
    broken = await create_task(client, auth, http_task(gone, name="broken"))

    with caplog.at_level(logging.INFO, logger="service.runs.report"):
        done = await sync(client, auth, ok["id"])
        failed = await sync(client, auth, broken["id"])
        await asyncio.sleep(0.2)

    lines = [
        r for r in caplog.records if r.name == "service.runs.report" and "fields" in r.__dict__
    ]
    by_run = {r.__dict__["fields"]["run_id"]: r for r in lines}
    assert sorted(by_run) == sorted([done["id"], failed["id"]])  # one line per run
    assert len(lines) == 2
    entry = json.loads(JsonFormatter().format(by_run[done["id"]]))
    assert entry["event"] == "run.ended"
    assert (entry["task_id"], entry["run_id"], entry["status"]) == (
        ok["id"],
        done["id"],
        "succeeded",
    )
    assert entry["error_code"] is None
    assert entry["counts"]["inserted"] == 5 and entry["counts"]["pages"] == 1
    assert entry["duration_seconds"] >= 0
    assert f"run {done['id']} succeeded in" in entry["message"]
    failure = json.loads(JsonFormatter().format(by_run[failed["id"]]))
    assert (failure["status"], failure["error_code"]) == ("failed", failed["error"]["code"])
    assert failure["counts"]["inserted"] == 0


async def test_holds_and_budget_waits_are_counted_by_host(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    """A 429 with Retry-After holds the host: another task's request waits for it."""
    limited = {"once": True}

    def handler(request: Request) -> Response:
        if request.url.path == "/limited" and limited.pop("once", False):
            return JSONResponse({}, status_code=429, headers={"Retry-After": "2"})
        return JSONResponse([{"id": 1}])

    first = await create_task(client, auth, http_task(upstream.route("/limited", handler), "a"))
    other = await create_task(client, auth, http_task(upstream.route("/other", handler), "b"))
    host = f"127.0.0.1:{upstream.base_url.rsplit(':', 1)[1]}"
    holds = in_process("backsync_upstream_holds_total", host=host)
    waits = in_process("backsync_upstream_budget_waits_total", host=host, reason="hold")
    waited = in_process("backsync_upstream_budget_wait_seconds_total", host=host, reason="hold")
    refused = in_process("backsync_upstream_requests_total", host=host, status="429")

    run = await trigger(client, auth, first["id"])
    while limited:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # the worker has read the 429 and holds the host by now
    assert (await sync(client, auth, other["id"]))["status"] == "succeeded"
    assert (await wait_run(client, auth, run["id"]))["status"] == "succeeded"

    assert in_process("backsync_upstream_holds_total", host=host) == holds + 1
    assert in_process("backsync_upstream_requests_total", host=host, status="429") == refused + 1
    assert in_process("backsync_upstream_budget_waits_total", host=host, reason="hold") > waits
    slept = in_process("backsync_upstream_budget_wait_seconds_total", host=host, reason="hold")
    assert 1.0 <= slept - waited <= 4.0


async def test_reconciler_resends_and_lease_takeovers_are_counted(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, settings: Settings
) -> None:
    """A run left `running` under a dead worker's expired lease: the reconciler sends it
    again, and the worker that claims it takes it over."""
    url = upstream.route("/items", cursor(make_records(3), size=10))
    task = await create_task(client, auth, http_task(url, records_path="data"))
    run = await trigger(client, auth, task["id"])
    engine = create_engine(settings.database_url)
    queue = await Queue.connect(settings)
    try:
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker() as session:
            await session.execute(
                _ORPHANED, {"id": run["id"], "at": utcnow() - timedelta(minutes=1)}
            )
            await session.commit()
        resent = in_process("backsync_reconciler_resent_total", reason="lease_expired")
        taken = in_process("backsync_lease_takeovers_total")

        await reconcile_once(sessionmaker, queue, settings.queued_grace_seconds)
        await reconcile_once(sessionmaker, queue, settings.queued_grace_seconds)  # one job
        assert in_process("backsync_reconciler_resent_total", reason="lease_expired") == resent + 1
        async with running_worker(settings):
            final = await wait_run(client, auth, run["id"])
    finally:
        await queue.close()
        await engine.dispose()

    assert final["status"] == "succeeded"
    assert in_process("backsync_lease_takeovers_total") == taken + 1


_ORPHANED = text(
    "UPDATE run SET status = 'running', lease_owner = 'dead-worker:1:x',"
    " lease_expires_at = :at, started_at = :at WHERE id = :id"
).bindparams(bindparam("at", type_=UTCDateTime()))
_MOVE = text("UPDATE task SET next_run_at = :at WHERE id = :id").bindparams(
    bindparam("at", type_=UTCDateTime())
)


async def _move_slot(settings: Settings, task_id: str, at: Any) -> None:
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(_MOVE, {"at": at, "id": task_id})
    finally:
        await engine.dispose()
