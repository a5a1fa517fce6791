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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from service.broker.queue import Queue
from service.crypto import SecretBox, SecretBoxError
from service.logs import bind_log_context
from service.models.types import utcnow
from service.runs.ledger import LeasedRun, Outcome, RunLedger
from service.sync import (
    REQUEST_RETRY,
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
    start_params,
)
from service.tasks.service import unsealed_source

log = logging.getLogger(__name__)

PAGES_AHEAD = 4
"""Fetches under way while a page is stored. A first sync can only ever have one (each
page names the next); a resync whose stored validators predict its pages has up to
this many, so a run of 304s or unchanged pages costs a round trip per four pages."""

MAX_ATTEMPTS_FACTOR = 10
"""A run ends after `retry.max_attempts` attempts that committed no page, or after this
many times `max_attempts` attempts in all, whichever comes first."""

_INTERNAL_ERROR: dict[str, Any] = {
    "code": "internal_error",
    "message": "internal error while syncing",
    "http_status": None,
    "retryable": True,
}


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
    request_retry: RequestRetry = REQUEST_RETRY
    """How a failed request is tried again in place, before it ends the attempt."""
    events_written: Callable[[], None] = _nobody_listens
    """Rung when a run ends (its end wrote events): the worker's webhook deliverer."""


async def execute_run(deps: RunnerDeps, run_id: str) -> None:
    run = await deps.ledger.claim(run_id)
    if run is None:  # finished, leased by a live worker, or not yet due
        return
    bind_log_context(task_id=run.task_id, tenant=run.tenant_id)
    if run.cancel_requested:
        await deps.ledger.cancel(run)
        return
    async with _heartbeat(deps.ledger, run):
        try:
            outcome = await _sync(deps, run)
        except SyncError as exc:
            log.info("run %s attempt %s failed: %s", run_id, run.attempt, exc.code)
            await _failed(deps, run, exc.as_dict(), exc.retry_after, exc.requests)
        except Exception:
            log.exception("run %s crashed", run_id)
            await _failed(deps, run, _INTERNAL_ERROR, None, 0)
        else:
            log.info("run %s attempt %s: %s", run_id, run.attempt, outcome.value)
    deps.events_written()  # a ring that finds no new event costs one query


async def _sync(deps: RunnerDeps, run: LeasedRun) -> Outcome:
    """Fetch the run's pages from its checkpoint and commit each; the last page's
    commit ends the run."""
    if run.done:
        return await deps.ledger.succeed(run)
    source = _source(deps.secrets, run)
    known = {} if run.rereads else await deps.ledger.validators(run)

    async def validators(url_key: str) -> Any:
        return known.get(url_key)

    pages = iter_pages(
        deps.http,
        source,
        Limits.model_validate(run.limits),
        PageRequest.from_json(run.checkpoint) if "url" in run.checkpoint else None,
        budget=deps.budget,
        validators=validators,
        ahead=PAGES_AHEAD,
        retry=deps.request_retry,
    )
    async with contextlib.aclosing(pages):
        async for page in pages:
            outcome = await deps.ledger.commit(run, page)
            if outcome is not Outcome.CONTINUE:
                return outcome
    raise AssertionError("the engine stopped before a last page")


def _source(secrets: SecretBox, run: LeasedRun) -> Source:
    """The task's source with its credentials, and this run's incremental bounds."""
    try:
        source = unsealed_source(run.source, run.auth_ciphertext, secrets)
    except SecretBoxError as exc:
        raise SyncError(str(exc), code="credentials_unreadable") from exc
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
    if it committed no page; waiting for a held host (`upstream_held`) never counts."""
    await deps.ledger.settle(run, requests)  # keep what the good pages established
    retry = Retry.model_validate(run.retry)
    counted = run.committed_pages == 0 and error.get("code") != "upstream_held"
    entry = run.attempt_entry(error, counted=counted)
    spent = counted + sum(1 for old in run.attempts if old.get("counted", True))
    if (
        not error.get("retryable")
        or spent >= retry.max_attempts
        or run.attempt >= retry.max_attempts * MAX_ATTEMPTS_FACTOR
    ):
        await deps.ledger.fail(run, error, entry)
        return
    at = utcnow() + timedelta(seconds=next_delay(retry, max(spent, 1), retry_after))
    attempt = await deps.ledger.retry_later(run, error, entry, at)
    if attempt is not None:
        await deps.queue.enqueue_run(run.run_id, job_suffix=f"attempt:{attempt}", not_before=at)


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
