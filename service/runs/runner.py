"""Executing a run: the worker's side of a run's life.

Each page commits in one transaction with the run's counters and checkpoint, so a run
interrupted anywhere resumes at the page after its last committed one. Every step is
safe to repeat: the job may be delivered more than once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from service.crypto import SecretBox, SecretBoxError
from service.db import SessionMaker, transaction
from service.models.types import utcnow
from service.records.service import store_page
from service.runs import repository
from service.sync import Limits, Page, PageRequest, Source, SyncError, iter_pages
from service.tasks import repository as tasks_repository
from service.tasks.service import source_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunnerDeps:
    sessionmaker: SessionMaker
    http: httpx.AsyncClient
    secrets: SecretBox


@dataclass(frozen=True, slots=True)
class _Plan:
    task_id: str
    source: Source
    limits: Limits
    start: PageRequest | None
    done: bool
    """The last page was committed before an interruption: only the finish is left."""


_DONE: dict[str, Any] = {"done": True}


class _Stop(Exception):
    """The run ended while we were working: cancelled, deleted, or finished elsewhere."""


async def execute_run(deps: RunnerDeps, run_id: str) -> None:
    try:
        plan = await _start(deps, run_id)
    except SyncError as exc:
        await _finish(deps, run_id, "failed", exc.as_dict())
        return
    if plan is None:
        return
    if plan.done:
        await _finish(deps, run_id, "succeeded", None)
        return
    try:
        async for page in iter_pages(deps.http, plan.source, plan.limits, plan.start):
            await _commit_page(deps, run_id, plan.task_id, page)
    except _Stop:
        return
    except SyncError as exc:
        log.info("run %s failed: %s", run_id, exc.code, extra={"run_id": run_id})
        await _finish(deps, run_id, "failed", exc.as_dict())
        return
    except Exception:
        log.exception("run %s crashed", run_id, extra={"run_id": run_id})
        await _finish(
            deps,
            run_id,
            "failed",
            {"code": "internal_error", "message": "internal error while syncing", "http_status": None, "retryable": False},
        )
        return
    await _finish(deps, run_id, "succeeded", None)


async def _start(deps: RunnerDeps, run_id: str) -> _Plan | None:
    async with transaction(deps.sessionmaker) as session:
        run = await repository.claim(session, run_id, utcnow())
        if run is None:
            return None
        if run.cancel_requested:
            await repository.finish(session, run_id, "cancelled", utcnow(), None)
            return None
        task = await tasks_repository.get_by_id(session, run.task_id)
        if task is None:
            return None
        try:
            source = source_of(task, deps.secrets)
        except SecretBoxError as exc:
            raise SyncError(str(exc), code="credentials_unreadable") from exc
        return _Plan(
            task_id=task.id,
            source=source,
            limits=Limits.model_validate(task.limits),
            start=PageRequest.from_json(run.checkpoint) if run.checkpoint and "url" in run.checkpoint else None,
            done=bool(run.checkpoint and run.checkpoint.get("done")),
        )


async def _commit_page(deps: RunnerDeps, run_id: str, task_id: str, page: Page) -> None:
    progress = {
        "pages": 1,
        "requests": 1,
        "records_seen": page.records.seen,
        "rejected": len(page.records.rejections),
        "bytes": page.fetched.nbytes,
    }
    checkpoint = page.next.to_json() if page.next else _DONE
    async with transaction(deps.sessionmaker) as session:
        cancel = await repository.add_page_progress(session, run_id, progress, checkpoint)
        if cancel is None:
            raise _Stop
        counts = await store_page(session, task_id, page.records.rows)
        if counts is None:
            raise _Stop
        await repository.add_counts(
            session,
            run_id,
            {"inserted": counts.inserted, "updated": counts.updated, "unchanged": counts.unchanged},
        )
        if cancel:
            await repository.finish(session, run_id, "cancelled", utcnow(), None)
    if cancel:
        raise _Stop


async def _finish(deps: RunnerDeps, run_id: str, status: str, error: dict[str, Any] | None) -> None:
    async with transaction(deps.sessionmaker) as session:
        now = utcnow()
        run = await repository.finish(session, run_id, status, now, error)
        if run is not None:
            await repository.record_outcome(session, run.task_id, status == "succeeded", now)
