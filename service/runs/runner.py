"""Executing a run: the worker's side of a run's life.

Each page commits in one transaction with the run's counters, checkpoint and lease, so
a run interrupted anywhere resumes at the page after its last committed one — in this
worker's next attempt, or in another worker after a crash. Only the holder of the
run's lease may write to it, so a worker that lost its lease (it stalled, another took
over) can never write a page twice. Every step is safe to repeat: a job may be
delivered more than once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.crypto import SecretBox, SecretBoxError
from service.db import SessionMaker, autocommit, dialect_of, transaction
from service.logs import bind_log_context
from service.models.types import utcnow
from service.queue import Queue
from service.records.service import (
    PageComparison,
    PageCounts,
    compare_page,
    last_copies,
    store_page,
    write_changes,
)
from service.runs import page_statement, page_validators, repository
from service.runs.page_loop import QuietPages, page_progress
from service.sync import Limits, Page, PageRequest, Retry, Source, SyncError, iter_pages
from service.sync.backoff import next_delay
from service.sync.budget import HostBudget
from service.sync.client import UpstreamClient
from service.sync.conditional import Validator, page_key
from service.sync.incremental import Watermark, later, page_watermark, start_params
from service.sync.records import Row, records_of
from service.tasks import repository as tasks_repository
from service.tasks.service import unsealed_source

log = logging.getLogger(__name__)

_DONE: dict[str, Any] = {"done": True}

PAGES_AHEAD = 4
"""Fetches under way while a page is stored. A first sync can only ever have one (each
page names the next); a resync whose stored validators predict its pages has up to
this many, so a run of 304s or unchanged pages costs a round trip per four pages."""


@dataclass(frozen=True, slots=True)
class RunnerDeps:
    sessionmaker: SessionMaker
    http: UpstreamClient
    secrets: SecretBox
    queue: Queue
    owner: str
    """This worker's identity on the leases it holds."""
    lease_seconds: float = 30.0
    budget: HostBudget | None = None
    """Shared per-host request budget (rate limits, Retry-After holds) across workers."""

    @property
    def one_statement_pages(self) -> bool:
        """Write a page with its progress in one statement (see `page_statement`)."""
        return dialect_of(self.sessionmaker) == "postgresql"

    def lease_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.lease_seconds)


@dataclass(frozen=True, slots=True)
class _Plan:
    run_id: str
    task_id: str
    attempt: int
    source: Source
    limits: Limits
    retry: Retry
    start: PageRequest | None
    done: bool
    """The last page was committed before an interruption: only the finish is left."""
    attempt_started_at: datetime
    watermark: Watermark | None
    """The largest incremental cursor seen so far in this run (checkpointed per page)."""
    moves_watermark: bool
    """False for backfills: they fetch a window and leave the task's watermark alone."""
    attempts: list[dict[str, Any]]
    """The attempts recorded so far (only the lease holder writes them)."""
    fresh_task: bool
    """The task has never stored a record: its first pages will be all inserts."""
    rereads: bool
    """Stored page validators and digests are ignored: a task with no records has none
    that could match, and a full refresh reads every page again."""


class _Stop(Exception):
    """The run is no longer ours: cancelled, deleted, finished or taken over elsewhere."""


async def execute_run(deps: RunnerDeps, run_id: str) -> None:
    try:
        plan = await _start(deps, run_id)
    except _Unreadable as exc:
        await _end(deps, run_id, "failed", exc.error, None)
        return
    if plan is None:
        return
    heartbeat = asyncio.create_task(_heartbeat(deps, run_id))
    try:
        watermark = await _run_pages(deps, plan)
    except _Stop:
        return
    except SyncError as exc:
        log.info(
            "run %s attempt %s failed: %s", run_id, plan.attempt, exc.code, extra={"run_id": run_id}
        )
        await _failed(deps, plan, exc.as_dict(), getattr(exc, "retry_after", None))
    except Exception:
        log.exception("run %s crashed", run_id, extra={"run_id": run_id})
        error = {
            "code": "internal_error",
            "message": "internal error while syncing",
            "http_status": None,
            "retryable": True,
        }
        await _failed(deps, plan, error, None)
    else:
        await _end(
            deps, run_id, "succeeded", None, plan, watermark if plan.moves_watermark else None
        )
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat


class _Unreadable(Exception):
    def __init__(self, error: dict[str, Any]):
        self.error = error


async def _start(deps: RunnerDeps, run_id: str) -> _Plan | None:
    now = utcnow()
    async with autocommit(deps.sessionmaker) as session:  # the claim is one statement
        run = await repository.claim(session, run_id, deps.owner, now, deps.lease_until())
        if run is None:
            return None
        bind_log_context(task_id=run.task_id, tenant=run.tenant_id)
        if run.cancel_requested:
            await repository.finish(session, run_id, deps.owner, "cancelled", now, None)
            return None
    try:
        source = unsealed_source(run.source, run.auth_ciphertext, deps.secrets)
    except SecretBoxError as exc:
        error = {
            "code": "credentials_unreadable",
            "message": str(exc),
            "http_status": None,
            "retryable": False,
        }
        raise _Unreadable(error) from exc
    checkpoint = run.checkpoint or {}
    if source.incremental is not None and "url" not in checkpoint:
        source = _bounded(source, run.watermark, run.options)
    return _Plan(
        run_id=run_id,
        task_id=run.task_id,
        attempt=run.attempt,
        source=source,
        limits=Limits.model_validate(run.limits),
        retry=Retry.model_validate(run.retry),
        start=PageRequest.from_json(checkpoint) if "url" in checkpoint else None,
        done=bool(checkpoint.get("done")),
        attempt_started_at=now,
        watermark=checkpoint.get("watermark"),
        moves_watermark=source.incremental is not None and "backfill" not in run.options,
        attempts=run.attempts,
        fresh_task=run.record_seq == 0,
        rereads=run.record_seq == 0 or bool(run.options.get("full_refresh")),
    )


def _bounded(source: Source, watermark: Watermark | None, options: dict[str, Any]) -> Source:
    """The source with this run's incremental bounds added to its query parameters."""
    assert source.incremental is not None
    backfill = options.get("backfill")
    bounds = start_params(
        source.incremental,
        watermark,
        full_refresh=bool(options.get("full_refresh")),
        backfill=(backfill["from"], backfill["to"]) if backfill else None,
    )
    return source.model_copy(update={"params": {**source.params, **bounds}})


async def _run_pages(deps: RunnerDeps, plan: _Plan) -> Watermark | None:
    """Fetch and store every page; returns the run's watermark."""
    watermark = plan.watermark
    if plan.done:
        return watermark

    known: dict[str, Validator] = {}
    if not plan.rereads:
        async with deps.sessionmaker() as session:
            known = await page_validators.all_for_task(session, plan.task_id)

    async def validators(url_key: str) -> Validator | None:
        return known.get(url_key)

    pages = iter_pages(
        deps.http,
        plan.source,
        plan.limits,
        plan.start,
        budget=deps.budget,
        validators=validators,
        ahead=PAGES_AHEAD,
    )
    changing = plan.fresh_task  # did the last page change anything? (the write strategy)
    quiet = QuietPages()
    try:
        async with contextlib.aclosing(pages):
            async for page in pages:
                changing, watermark = await _take_page(deps, plan, page, quiet, watermark, changing)
    except SyncError:
        if quiet.pages:  # keep what the good pages before the failure established
            await _flush(deps, plan, quiet, watermark, last=False)
        raise
    return watermark


async def _take_page(
    deps: RunnerDeps,
    plan: _Plan,
    page: Page,
    quiet: QuietPages,
    watermark: Watermark | None,
    changing: bool,
) -> tuple[bool, Watermark | None]:
    """Store one page, or note it among the quiet ones; returns (changed anything,
    watermark)."""
    incremental = plan.source.incremental
    unread = page.not_modified or page.same_as_before  # no body decoded: records as stored
    if incremental is not None and not unread:
        records = records_of(page.fetched.body, plan.source.records_path)
        watermark = later(watermark, page_watermark(records, incremental.cursor_path))
    checkpoint = {**(page.next.to_json() if page.next else _DONE), "watermark": watermark}
    comparison = None
    if not unread and not changing:
        comparison = await _compare(deps, plan, page)
    if unread or (comparison is not None and not comparison.changed):
        counts = comparison.counts if comparison is not None else _unread_counts(page)
        validator = (page_key(page.request), page.validator) if page.validator else None
        quiet.add(page_progress(page, counts), checkpoint, validator)
        if page.next is None or quiet.due():
            await _flush(deps, plan, quiet, watermark, last=page.next is None)
        return False, watermark
    changed = await _commit_page(deps, plan, page, checkpoint, comparison, quiet, watermark)
    return changed, watermark


def _unread_counts(page: Page) -> PageCounts:
    """A page whose bytes are the stored ones: its records are all unchanged."""
    if page.same_as_before and page.known is not None:
        return PageCounts(unchanged=page.known.records_seen - page.known.rejected)
    return PageCounts()


async def _compare(deps: RunnerDeps, plan: _Plan, page: Page) -> PageComparison:
    """Read-only, outside any transaction (autocommit): most resync pages stop here."""
    async with autocommit(deps.sessionmaker) as session:
        return await compare_page(session, plan.task_id, page.records.rows)


async def _commit_page(
    deps: RunnerDeps,
    plan: _Plan,
    page: Page,
    checkpoint: dict[str, Any],
    comparison: PageComparison | None,
    quiet: QuietPages,
    watermark: Watermark | None,
) -> bool:
    """The page's records, validator, counters, checkpoint and lease: one transaction
    (with the progress of the quiet pages before it). Returns whether it changed
    anything.

    The run row is written last, fenced by the lease: if this worker lost the run
    meanwhile, the whole page rolls back and nothing of it was ever visible. On
    PostgreSQL the same is one statement (`_write_at_once`), fenced inside it.
    """
    last = page.next is None
    if _at_once(deps, plan, watermark, last):
        final, earlier = last_copies(page.records.rows)
        progress = quiet.merged(page_progress(page, earlier))
        return await _write_at_once(
            deps,
            plan,
            list(final.values()),
            progress,
            checkpoint,
            _validators(page, quiet),
            last,
            quiet,
        )
    async with transaction(deps.sessionmaker) as session:
        if comparison is None:
            counts = await store_page(session, plan.task_id, page.records.rows)
        elif await write_changes(session, plan.task_id, comparison):
            counts = comparison.counts
        else:
            counts = None
        if counts is None:
            raise _Stop
        for url_key, validator in _validators(page, quiet):
            await page_validators.remember(session, plan.task_id, url_key, validator)
        progress = quiet.merged(page_progress(page, counts))
        await _record_progress(
            session, deps, plan, progress, checkpoint, watermark, page.next is None
        )
    quiet.clear()
    if page.next is None:
        raise _Stop
    return counts.inserted + counts.updated > 0


def _validators(page: Page, quiet: QuietPages) -> list[tuple[str, Validator]]:
    """The validators to store with a page: the quiet pages' before it, and its own."""
    own = [(page_key(page.request), page.validator)] if page.validator else []
    return [*quiet.validators, *own]


def _at_once(deps: RunnerDeps, plan: _Plan, watermark: Watermark | None, last: bool) -> bool:
    """Can this commit be one statement (`page_statement`)? On PostgreSQL, except for the
    end of a run that moves the task's watermark (compared in Python, `later`)."""
    return deps.one_statement_pages and not (last and plan.moves_watermark and watermark)


async def _write_at_once(
    deps: RunnerDeps,
    plan: _Plan,
    rows: list[Row],
    progress: dict[str, int],
    checkpoint: dict[str, Any],
    validators: list[tuple[str, Validator]],
    last: bool,
    quiet: QuietPages,
) -> bool:
    """`_commit_page` or `_flush` as one statement; returns whether it changed anything."""
    write = page_statement.PageWrite(
        run_id=plan.run_id,
        task_id=plan.task_id,
        owner=deps.owner,
        rows=rows,
        progress=progress,
        checkpoint=checkpoint,
        lease_until=deps.lease_until(),
        now=utcnow(),
        validators=validators,
        succeed=_with_attempt(plan, None) if last else None,
    )
    async with autocommit(deps.sessionmaker) as session:
        written = await page_statement.write(session, write)
    quiet.clear()
    await _stop_if_cancelled(deps, plan, written.cancel_requested)
    if last:
        raise _Stop
    return written.changed > 0


async def _stop_if_cancelled(deps: RunnerDeps, plan: _Plan, cancel: bool | None) -> None:
    """After progress committed on its own: `_Stop` once the run is no longer running
    here, ending it first if a cancel was asked for."""
    if cancel is None:
        raise _Stop
    if cancel:
        async with autocommit(deps.sessionmaker) as session:
            await repository.finish(session, plan.run_id, deps.owner, "cancelled", utcnow(), None)
        raise _Stop


async def _flush(
    deps: RunnerDeps, plan: _Plan, quiet: QuietPages, watermark: Watermark | None, *, last: bool
) -> None:
    assert quiet.checkpoint is not None
    if _at_once(deps, plan, watermark, last):
        await _write_at_once(
            deps, plan, [], quiet.progress, quiet.checkpoint, quiet.validators, last, quiet
        )
        return
    if not last and not quiet.validators:  # counters, checkpoint and lease: one statement
        async with autocommit(deps.sessionmaker) as session:
            cancel = await repository.add_page_progress(
                session,
                plan.run_id,
                deps.owner,
                quiet.progress,
                quiet.checkpoint,
                deps.lease_until(),
            )
        quiet.clear()
        await _stop_if_cancelled(deps, plan, cancel)
        return
    async with transaction(deps.sessionmaker) as session:
        for url_key, validator in quiet.validators:
            await page_validators.remember(session, plan.task_id, url_key, validator)
        await _record_progress(
            session, deps, plan, quiet.progress, quiet.checkpoint, watermark, last
        )
    quiet.clear()
    if last:
        raise _Stop


async def _record_progress(
    session: AsyncSession,
    deps: RunnerDeps,
    plan: _Plan,
    progress: dict[str, int],
    checkpoint: dict[str, Any],
    watermark: Watermark | None,
    last: bool,
) -> None:
    """Counters, checkpoint and lease (fenced); a cancel or the last page ends the run
    in the same transaction. Raises `_Stop` once the run is no longer running here."""
    cancel = await repository.add_page_progress(
        session, plan.run_id, deps.owner, progress, checkpoint, deps.lease_until()
    )
    if cancel is None:
        raise _Stop
    if cancel:
        await repository.finish(session, plan.run_id, deps.owner, "cancelled", utcnow(), None)
        await session.commit()
        raise _Stop
    if last:  # the run succeeds in the same transaction as its last page
        await _succeed(session, deps, plan, watermark)


async def _succeed(
    session: AsyncSession, deps: RunnerDeps, plan: _Plan, watermark: Watermark | None
) -> None:
    now = utcnow()
    attempts = _with_attempt(plan, None)
    task_id = await repository.finish(
        session, plan.run_id, deps.owner, "succeeded", now, None, attempts
    )
    if task_id is None:
        return
    await repository.record_outcome(session, task_id, True, now)
    if watermark is not None and plan.moves_watermark:
        await tasks_repository.advance_watermark(session, task_id, watermark)


async def _heartbeat(deps: RunnerDeps, run_id: str) -> None:
    """Keep the lease while a page takes long (slow upstream, big page)."""
    while True:
        await asyncio.sleep(deps.lease_seconds / 3)
        try:
            async with autocommit(deps.sessionmaker) as session:
                if not await repository.renew_lease(
                    session, run_id, deps.owner, deps.lease_until()
                ):
                    return
        except Exception:
            log.warning("could not renew the lease of run %s", run_id, exc_info=True)


def _with_attempt(plan: _Plan, error: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The run's attempts with this one appended."""
    entry = {
        "attempt": plan.attempt,
        "started_at": plan.attempt_started_at.isoformat(),
        "finished_at": utcnow().isoformat(),
        "error": error,
    }
    return [*plan.attempts, entry]


async def _failed(
    deps: RunnerDeps, plan: _Plan, error: dict[str, Any], retry_after: float | None
) -> None:
    """A retryable failure with attempts left becomes the next attempt; else the run fails."""
    if not error.get("retryable") or plan.attempt >= plan.retry.max_attempts:
        await _end(deps, plan.run_id, "failed", error, plan)
        return
    delay = next_delay(plan.retry, plan.attempt, retry_after)
    next_at = utcnow() + timedelta(seconds=delay)
    async with autocommit(deps.sessionmaker) as session:
        attempt = await repository.schedule_retry(
            session, plan.run_id, deps.owner, next_at, error, _with_attempt(plan, error)
        )
    if attempt is not None:
        await deps.queue.enqueue_run(
            plan.run_id, job_suffix=f"attempt:{attempt}", not_before=next_at
        )


async def _end(
    deps: RunnerDeps,
    run_id: str,
    status: str,
    error: dict[str, Any] | None,
    plan: _Plan | None,
    watermark: Watermark | None = None,
) -> None:
    async with transaction(deps.sessionmaker) as session:
        if status == "succeeded" and plan is not None:
            await _succeed(session, deps, plan, watermark)
            return
        now = utcnow()
        owner = deps.owner if plan is not None else None
        attempts = _with_attempt(plan, error) if plan is not None else None
        task_id = await repository.finish(session, run_id, owner, status, now, error, attempts)
        if task_id is not None:
            await repository.record_outcome(session, task_id, False, now)
