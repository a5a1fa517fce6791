"""The life of a run, on the worker: claim it, fetch its pages, commit each one, end it.

Everything the worker tells the database about a run goes through the run ledger
(`service.runs.ledger`), which commits each page with the run's counters, checkpoint
and lease, so a run interrupted anywhere resumes at the page after its last committed
one — in this worker's next attempt, or in another worker after a crash. Only the
holder of the run's lease may write to it. Every step is safe to repeat: a job may be
delivered more than once.

Retries come in two sizes. A transient failure of one request is retried in place by
the engine (`service.sync`). A failure that ends an attempt parks the run as
`retrying` with backoff; only attempts that committed no page count toward
`retry.max_attempts`, so a long sync that keeps making progress against a mildly flaky
API finishes, while `MAX_ATTEMPTS_FACTOR` still bounds every run.

A tenant runs at most `BACKSYNC_TENANT_MAX_RUNNING` runs at once: a job whose claim the
cap turns away ends at once (its slot is free for other tenants' runs), leaving the run
due and saying why; the end of one of the tenant's runs sends the oldest waiting one
again, and each is looked at every `WAIT_RECHECK_SECONDS` besides. Waiting is not an
attempt: nothing about the run's retries changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.exceptions
import sqlalchemy.exc

from service.broker.outage import RedisUnavailable
from service.broker.queue import Queue
from service.crypto import SecretBox, SecretBoxError
from service.logs import bind_log_context, bind_secrets
from service.models.types import utcnow
from service.runs import report
from service.runs.ledger import LeasedRun, Outcome, RunLedger
from service.sync import (
    REQUEST_RETRY,
    BodyBudget,
    HostBudget,
    Limits,
    PageRequest,
    RequestRetry,
    Retry,
    Source,
    SyncError,
    UpstreamClient,
    iter_pages,
    next_delay,
    secret_values,
    start_params,
)
from service.tasks.service import unsealed_source

log = logging.getLogger(__name__)

PAGES_AHEAD = 6
"""Fetches under way while a page is stored. A first sync has one or two (each page
names the next: `RunLedger.decoded_ahead`); a resync whose stored validators predict
its pages has up to this many, so a run of 304s or unchanged pages costs a round trip
per six pages. Six is what browsers open to one host; it took 5-11% less of the
worker's CPU per 304 page than four did, where eight took little less than six
(`bench.engine --walk 304 --ahead N`, session 13). Every request still waits on the
host's budget."""

WAIT_RECHECK_SECONDS = 10.0
"""A run waiting for its tenant's cap is started by the end of one of its tenant's runs
(`Queue.wake_waiting`); this is how often it is looked at besides, for the wake that
went elsewhere. Longer would delay those; shorter costs a claim per waiting run more
often (a tenant with a thousand runs queued behind its cap: a hundred a second)."""

MAX_ATTEMPTS_FACTOR = 10
"""A run ends after `retry.max_attempts` attempts that committed no page, or after this
many times `max_attempts` attempts in all, whichever comes first."""

_UNAVAILABLE = (
    OSError,  # connections refused, reset or timed out
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
"""Crashes caused by the database or Redis being away: the next attempt may well work."""

_NOT_COUNTED = frozenset({"upstream_held", "broker_unavailable"})
"""Attempts that end waiting, for a held host or for Redis: never the run's failure."""


def _nobody_listens() -> None:
    pass


@dataclass(frozen=True, slots=True)
class RunnerDeps:
    ledger: RunLedger
    http: UpstreamClient
    secrets: SecretBox
    queue: Queue
    budget: HostBudget | None = None
    """Shared per-host request budget (rate limits, Retry-After holds) across workers."""
    bodies: BodyBudget | None = None
    """The worker's in-flight body bytes, shared by its runs (and how far a body may
    inflate: `BACKSYNC_WORKER_MAX_INFLIGHT_BYTES`, `BACKSYNC_MAX_COMPRESSION_RATIO`)."""
    max_response_bytes: int | None = None
    """The server's cap on a task's `limits.max_response_bytes`
    (`BACKSYNC_MAX_RESPONSE_BYTES`): tasks stored before it was lowered are held to it."""
    request_retry: RequestRetry = REQUEST_RETRY
    """How a failed request is tried again in place, before it ends the attempt."""
    max_hold_seconds: float = 3600.0
    """The server's cap on a `Retry-After` wait (`BACKSYNC_UPSTREAM_MAX_HOLD_SECONDS`)."""
    events_written: Callable[[], None] = _nobody_listens
    """Rung when a run ends (its end wrote events): the worker's webhook deliverer."""


async def execute_run(deps: RunnerDeps, run_id: str) -> None:
    run = await deps.ledger.claim(run_id)
    if run is None and deps.ledger.tenant_cap:
        run = await _wait_for_slot(deps, run_id)
    if run is None:  # finished, leased by a live worker, not yet due, or over the cap
        return
    bind_log_context(task_id=run.task_id, tenant=run.tenant_id)
    if run.previous_owner is not None and run.previous_owner != deps.ledger.owner:
        report.taken_over(run)
    try:
        await _execute(deps, run)
    finally:
        if deps.ledger.tenant_cap:  # its slot is free: the tenant's next run may start
            await _wake_next(deps, run.tenant_id)


async def _execute(deps: RunnerDeps, run: LeasedRun) -> None:
    run_id = run.run_id
    if run.cancel_requested:
        await deps.ledger.cancel(run)
        report.ended(run, "cancelled")
        return
    async with _heartbeat(deps.ledger, run):
        try:
            outcome = await _sync(deps, run)
        except SyncError as exc:
            log.info("run %s attempt %s failed: %s", run_id, run.attempt, exc.code)
            await _failed(deps, run, exc.as_dict(), exc.retry_after, exc.requests)
        except Exception as exc:
            log.exception("run %s crashed", run_id)
            await _failed(deps, run, _crash(exc), None, 0)
        else:
            report.outcome(run, outcome)
        finally:  # a page held for a commit that never came: fetched again next time
            run.quiet.let_go()
    deps.events_written()  # a ring that finds no new event costs one query


def recheck_at(now: datetime, every: float = WAIT_RECHECK_SECONDS) -> datetime:
    """The next point of a grid of `every` seconds after `now`: the re-sends of a waiting
    run, whichever job parked it (its own last re-send, a wake that found the slot taken,
    a reconciler's), land on the same point and so are one job (`Queue.park_run`)."""
    return datetime.fromtimestamp((math.floor(now.timestamp() / every) + 1) * every, UTC)


async def _wait_for_slot(deps: RunnerDeps, run_id: str) -> LeasedRun | None:
    """The claim failed: if the run is due all the same, its tenant is at the cap. It
    waits queued, saying why, holding no job slot and spending no attempt: woken when one
    of its tenant's runs ends (`_wake_next`), else looked at again at `recheck_at`.

    Once parked it is claimed once more: a run of its tenant that ended between the
    first claim and the parking found no one to wake, and the slot it freed would
    otherwise stay free until the recheck. Returns the run when that claim wins."""
    at = recheck_at(utcnow())
    waiting = await deps.ledger.wait_for_slot(run_id, at)
    if waiting is None:  # not due: finished, running, or not yet due
        return None
    try:
        await deps.queue.park_run(run_id, waiting.tenant_id, waiting.since, at)
    except Exception:  # Redis away: the reconciler re-sends it from its `next_attempt_at`
        log.warning("could not park waiting run %s", run_id, exc_info=True)
    run = await deps.ledger.claim(run_id)
    if run is None:
        log.info("run %s waits: its tenant runs as many runs as it may", run_id)
        return None
    with contextlib.suppress(Exception):  # a stale member only costs a wasted wake
        await deps.queue.unpark_run(run_id, waiting.tenant_id)  # wakes are for waiters
    return run


async def _wake_next(deps: RunnerDeps, tenant_id: str) -> None:
    """A run of the tenant ended (or stepped back): start its oldest waiting run. Redis
    being away only delays that one to its next re-send, so it is logged, not raised."""
    try:
        await deps.queue.wake_waiting(tenant_id)
    except Exception:
        log.warning("could not wake a waiting run of tenant %s", tenant_id, exc_info=True)


async def _sync(deps: RunnerDeps, run: LeasedRun) -> Outcome:
    """Fetch the run's pages from its checkpoint and commit each; the last page's
    commit ends the run."""
    if run.mapping_error is not None:
        raise SyncError(run.mapping_error, code="bad_config")
    if run.done:
        return await deps.ledger.succeed(run)
    source = _source(deps.secrets, run)
    known = {} if run.rereads else await deps.ledger.validators(run)

    async def validators(url_key: str) -> Any:
        return known.get(url_key)

    pages = iter_pages(
        deps.http,
        source,
        _limits(run.limits, deps.max_response_bytes),
        PageRequest.from_json(run.checkpoint) if "url" in run.checkpoint else None,
        budget=deps.budget,
        bodies=deps.bodies,
        validators=validators,
        ahead=PAGES_AHEAD,
        decoded_ahead=deps.ledger.decoded_ahead(run),
        retry=deps.request_retry,
    )
    async with contextlib.aclosing(pages):
        async for page in pages:
            report.page(page)
            outcome = await deps.ledger.commit(run, page)
            if outcome is not Outcome.CONTINUE:
                return outcome
    raise AssertionError("the engine stopped before a last page")


def _limits(stored: dict[str, Any], cap: int | None) -> Limits:
    """The task's limits, its response size held to the server's cap."""
    limits = Limits.model_validate(stored)
    if cap is not None and limits.max_response_bytes > cap:
        return limits.model_copy(update={"max_response_bytes": cap})
    return limits


def _crash(exc: Exception) -> dict[str, Any]:
    """The error of an attempt that raised something unexpected. Only a crash caused by
    the database or Redis being away is retried: any other would crash the next attempt
    the same way, so it ends the run at once rather than spending every attempt. The
    message names the exception's type only (its text can carry data or credentials);
    the worker's log has the traceback."""
    transient = isinstance(exc, _UNAVAILABLE) or (
        isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
    )
    kind = type(exc).__name__
    message = (
        f"internal error while syncing ({kind}); retried: the database or Redis was unavailable"
        if transient
        else f"internal error while syncing ({kind}); not retried, it would fail the same way"
        " (the worker's log has the details)"
    )
    return {
        "code": "internal_error",
        "message": message,
        "http_status": None,
        "retryable": transient,
    }


def _held_too_long(error: dict[str, Any], retry_after: float, limit: float) -> dict[str, Any]:
    """The upstream asked (`Retry-After`) for a longer wait than the task and the server
    allow: the run ends now, saying until when, instead of parking for days."""
    until = (utcnow() + timedelta(seconds=retry_after)).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = (
        f"the upstream asked to wait until {until} (Retry-After {retry_after:g} s), longer"
        f" than this run may wait ({limit:g} s: the smaller of retry.max_delay_seconds and"
        " BACKSYNC_UPSTREAM_MAX_HOLD_SECONDS); a later trigger or schedule slot tries again"
    )
    return {**error, "code": "upstream_held", "message": message, "retryable": False}


def _source(secrets: SecretBox, run: LeasedRun) -> Source:
    """The task's source with its credentials, and this run's incremental bounds."""
    try:
        source = unsealed_source(run.source, run.auth_ciphertext, secrets)
    except SecretBoxError as exc:
        raise SyncError(str(exc), code="credentials_unreadable") from exc
    bind_secrets(secret_values(source.auth))  # masked in this run's logs, by value
    if source.incremental is None or "url" in run.checkpoint:
        return source
    backfill = run.options.get("backfill")
    bounds = start_params(
        source.incremental,
        run.task_watermark,
        full_refresh=bool(run.options.get("full_refresh")),
        backfill=(backfill["from"], backfill["to"]) if backfill else None,
    )
    return source.model_copy(update={"params": {**source.params, **bounds}})


async def _failed(
    deps: RunnerDeps,
    run: LeasedRun,
    error: dict[str, Any],
    retry_after: float | None,
    requests: int,
) -> None:
    """End the attempt: the next one later with backoff, or, when the error is final or
    the budget is spent, the run fails. An attempt counts toward `max_attempts` only
    if it committed no page; waiting for a held host (`upstream_held`) or for Redis
    (`broker_unavailable`) never counts."""
    await deps.ledger.settle(run, requests)  # keep what the good pages established
    retry = Retry.model_validate(run.retry)
    limit = min(retry.max_delay_seconds, deps.max_hold_seconds)
    if error.get("retryable") and retry_after is not None and retry_after > limit:
        error = _held_too_long(error, retry_after, limit)
    counted = run.committed_pages == 0 and error.get("code") not in _NOT_COUNTED
    entry = run.attempt_entry(error, counted=counted)
    spent = counted + sum(1 for old in run.attempts if old.get("counted", True))
    if (
        not error.get("retryable")
        or spent >= retry.max_attempts
        or run.attempt >= retry.max_attempts * MAX_ATTEMPTS_FACTOR
    ):
        await deps.ledger.fail(run, error, entry)
        report.ended(run, "failed", error)
        return
    at = utcnow() + timedelta(seconds=next_delay(retry, max(spent, 1), retry_after))
    attempt = await deps.ledger.retry_later(run, error, entry, at)
    if attempt is not None:
        report.retried(error)
        try:
            await deps.queue.enqueue_run(run.run_id, job_suffix=f"attempt:{attempt}", not_before=at)
        except RedisUnavailable:  # the retry is in the database: the reconciler sends it when due
            log.info("run %s: retry not enqueued, Redis is unavailable", run.run_id)


@contextlib.asynccontextmanager
async def _heartbeat(ledger: RunLedger, run: LeasedRun) -> AsyncIterator[None]:
    """Keep the lease while a page takes long (slow upstream, big page)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(ledger.lease_seconds / 3)
            try:
                if not await ledger.renew(run):
                    return
            except Exception:
                log.warning("could not renew the lease of run %s", run.run_id, exc_info=True)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
