"""What a run's writes mean, whatever the database: the one flow every ledger shares.

A worker writes to the database about a run only through a `RunLedger`. Each database
has one subclass (`postgres.py`, `sqlite.py`) that says completely what committing a
page means there (`_write`), how a page is compared with what is stored (`_changed`)
and how a run is claimed (`_claim_row`); everything else — which pages are compared,
which are batched, what a commit's outcome is, how a run ends — is here, once, with
its values in `run.py` and the SQL both databases share in `statements.py`.

The rules every ledger keeps:
- A page commits all or nothing: its records, its validator, the run's counters,
  checkpoint and lease, and on the last page the run's success and the task's outcome
  (and watermark). A run interrupted anywhere resumes after its last committed page.
- Only the lease holder writes: a commit fenced by a lease this worker lost writes
  nothing and says `Outcome.LEASE_LOST`.
- With a tenant cap (`tenant_cap`), a claim starts a due run only while its tenant has
  fewer runs `running`, however many workers claim at once; a run it turns away stays
  due and says why (`wait_for_slot`). Without one, the claim is the statement it was.
- Seqs: a write reserves one seq per row it sends to the upsert, in page order, under
  the task row's lock, so seqs are strictly increasing in commit order (gaps allowed:
  a row sent unchanged keeps its old seq).
- Pages that write no records (304s, byte-identical pages, compared-unchanged pages)
  are safe to fetch again, so their progress is batched (`QuietPages`) and committed
  with the next page that writes, every `QuietPages.MAX_PAGES` pages or
  `MAX_SECONDS`, and at the end. On a ledger whose `FRESH_PAGES_PER_STATEMENT` is more
  than one, a first sync's pages are held the same way and written with a later one.
"""

from __future__ import annotations

import abc
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db import SessionMaker, autocommit, transaction
from service.health.mapping import usable
from service.models.types import utcnow
from service.runs.ledger.outcomes import fail_run, succeed_run
from service.runs.ledger.progress import last_copies, page_progress
from service.runs.ledger.run import Ending, LeasedRun, Outcome, PageWrite, Waiting, Written
from service.runs.ledger.statements import (
    CLAIMED_RUN,
    CLAIMED_TASK,
    ENDED_STATS,
    LOCK_TASK,
    RUN,
    VALIDATORS,
    end_run,
    held,
    sweep,
    waiting_for_cap,
)
from service.sync import Page, Row, Validator, later, page_key

_DONE: dict[str, Any] = {"done": True}
WAITING_FOR_CAP = waiting_for_cap()


class RunLedger(abc.ABC):
    """The worker's one interface to the database about a run (see the module doc)."""

    FRESH_PAGES_PER_STATEMENT = 1
    """Commit a first sync's pages (`LeasedRun.fresh`) up to this many at a time where
    the upstream keeps up: a page whose next page is fetched already
    (`Page.following_ready`) is held (`QuietPages.hold`) and written with a later one,
    so the run makes fewer statements and commits; a slow upstream's pages are written
    one by one, as they come. A held page is as safe as a batched quiet one: it is
    fetched again if the attempt ends before the next commit (a failed attempt commits
    it: `settle`). The engine fetches as many decoded pages ahead (`decoded_ahead`), so
    that the next group is ready when a group's statement returns."""

    def __init__(
        self,
        sessionmaker: SessionMaker,
        owner: str,
        lease_seconds: float,
        auto_pause_after: int = 10,
        tenant_cap: int = 0,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.owner = owner
        """This worker's identity on the leases it holds."""
        self.lease_seconds = lease_seconds
        self.auto_pause_after = auto_pause_after
        """Failed runs in a row that pause a task (0: never; `outcomes.fail_run`)."""
        self.tenant_cap = tenant_cap
        """Runs one tenant may have running at once (0: no cap); a claim past it fails,
        and the run waits (`wait_for_slot`)."""

    def lease_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.lease_seconds)

    def decoded_ahead(self, run: LeasedRun) -> int:
        """How many decoded pages the engine may fetch ahead of the one being stored
        (`iter_pages`): as many as a statement commits of a first sync, else one."""
        return self.FRESH_PAGES_PER_STATEMENT if run.fresh else 1

    # ---- what each database says ------------------------------------------------------

    @abc.abstractmethod
    async def _claim_row(self, session: AsyncSession, params: dict[str, Any]) -> Any | None:
        """Take the run's lease (`claimed_run_update`, `CLAIMED_RUN`), and read its task
        (`CLAIMED_TASK`) and who held the lease before (`PREVIOUS_OWNER`): one row of
        all three, or None when the run is not ours to take. With `tenant_cap`, `params`
        has `cap`, and a run that is due starts only while its tenant runs fewer: each
        database says how that count stays true when workers claim the tenant's runs at
        the same moment."""

    async def _settle_claim(self, run_id: str, row: Any) -> Any | None:
        """A claim's second step, once the first statement's connection is back in the
        pool (a step that took a second connection while holding the first could wait
        forever on a pool that workers' claims had emptied): the row to run, or None
        when the claim was undone. As it is, by default."""
        return row

    @abc.abstractmethod
    async def _changed(self, task_id: str, rows: list[Row]) -> dict[str, bool]:
        """Read-only: which rows differ from what is stored, key -> is it new."""

    @abc.abstractmethod
    async def _write(self, run: LeasedRun, write: PageWrite) -> Written:
        """Commit `write` all or nothing, fenced by the lease (see the module doc)."""

    # ---- the shared flow --------------------------------------------------------------

    async def claim(self, run_id: str) -> LeasedRun | None:
        """The run, now running under this worker's lease; None when it is not ours to
        run (finished, leased by a live worker, not yet due)."""
        params = {
            "run_id": run_id,
            "owner": self.owner,
            "now": utcnow(),
            "lease_until": self.lease_until(),
        }
        if self.tenant_cap:
            params["cap"] = self.tenant_cap
        async with autocommit(self.sessionmaker) as session:
            row = await self._claim_row(session, params)
        if row is not None:  # its connection back in the pool before any other is taken
            row = await self._settle_claim(run_id, row)
        if row is None:
            return None
        values = dict(zip((*CLAIMED_RUN, *CLAIMED_TASK, "previous_owner"), row, strict=True))
        checkpoint = values.pop("checkpoint") or {}
        run = LeasedRun(
            run_id=run_id,
            task_id=values["task_id"],
            tenant_id=values["tenant_id"],
            user_id=values["user_id"],
            trigger=values["trigger"],
            attempt=values["attempt"],
            attempts=list(values["attempts"] or []),
            cancel_requested=bool(values["cancel_requested"]),
            checkpoint=checkpoint,
            options=values["options"] or {},
            source=values["source"],
            auth_ciphertext=values["auth_ciphertext"],
            limits=values["limits"],
            retry=values["retry"],
            task_watermark=values["watermark"],
            record_seq=values["record_seq"],
            prior_failures=values["consecutive_failures"],
            watermark=checkpoint.get("watermark"),
            previous_owner=values["previous_owner"],
        )
        if values["health_mapping"] is not None:
            try:
                run.health_mapping = usable(values["health_mapping"], run.user_id)
            except ValueError as exc:
                run.mapping_error = str(exc)
        run.compares_first = run.record_seq > 0 and not run.sweeps and not run.remaps
        # A mapped task's pages are upserted, never inserted blind: their samples commit with them.
        run.fresh = run.record_seq == 0 and not run.sweeps and run.health_mapping is None
        return run

    async def wait_for_slot(self, run_id: str, recheck_at: datetime) -> Waiting | None:
        """After a claim that failed: when the run is due all the same, its tenant is at
        the cap, and the run now says so (`waiting_reason`) and is looked at again by
        `recheck_at`; None when it is not due (finished, running, not yet due)."""
        params = {"run_id": run_id, "now": utcnow(), "recheck_at": recheck_at}
        async with autocommit(self.sessionmaker) as session:
            row = (await session.execute(WAITING_FOR_CAP, params)).first()
        return None if row is None else Waiting(run_id, row[0], row[1])

    async def validators(self, run: LeasedRun) -> dict[str, Validator]:
        """Every validator of the run's task, by page key: one query per run."""
        async with self.sessionmaker() as session:
            rows = await session.execute(VALIDATORS, {"task_id": run.task_id})
        return {key: Validator(*fields) for key, *fields in rows}

    async def commit(self, run: LeasedRun, page: Page) -> Outcome:
        """Store `page` (or batch it, if it writes no records) with the run's progress."""
        run.watermark = later(run.watermark, page.watermark)
        last = page.next is None
        checkpoint = {**(page.next.to_json() if page.next else _DONE), "watermark": run.watermark}
        own = [(page_key(page.request), page.validator)] if page.validator else []
        if page.unread:
            return await self._quiet(run, page_progress(page), checkpoint, own, last)
        final, earlier = last_copies(page.records.rows)
        rows = list(final.values())
        if run.compares_first and rows:
            changed = await self._changed(run.task_id, rows)
            if not changed:
                unchanged = earlier["unchanged"] + len(final)
                progress = page_progress(page, updated=earlier["updated"], unchanged=unchanged)
                return await self._quiet(run, progress, checkpoint, own, last)
            rows = [row for key, row in final.items() if key in changed]  # page order
        quiet = run.quiet
        if (
            run.fresh
            and page.following_ready
            and rows
            and not last
            and quiet.pages == quiet.held  # no quiet page waits: only pages held
            and quiet.held < self.FRESH_PAGES_PER_STATEMENT - 1
        ):
            held = {row.key: row for row in rows}  # the compared ones, if it compared
            run.quiet.hold(page, held, len(final), page_progress(page, **earlier), checkpoint, own)
            return Outcome.CONTINUE
        progress = run.quiet.merged(page_progress(page, **earlier))
        write = self._page_write(run, rows, len(final), progress, checkpoint, own, last)
        outcome, written = await self._commit(run, write, last)
        # A mapped task always compares first: only changed records are mapped again.
        run.compares_first = (
            not run.sweeps
            and not run.remaps
            and (written is None or written.changed == 0 or run.health_mapping is not None)
        )
        return outcome

    async def settle(self, run: LeasedRun, requests: int = 0) -> Outcome:
        """Commit the batched quiet pages now, with `requests` a failed page cost (before
        the attempt ends on a failure: keep what the good pages established, and count
        every request the upstream saw)."""
        if not run.quiet.pages and not requests:
            return Outcome.CONTINUE
        progress = run.quiet.merged({"requests": requests})
        checkpoint = run.quiet.checkpoint or run.checkpoint
        write = self._page_write(run, [], 0, progress, checkpoint, [])  # a held page's rows too
        outcome, _ = await self._commit(run, write)
        return outcome

    async def succeed(self, run: LeasedRun) -> Outcome:
        """End a run whose last page is committed: one resumed after its last page, or
        one that detects deletions, whose sweep commits with its end. The task row is
        locked first, as every page commit and a task's deletion take it."""
        ending = self._ending(run, 0)
        async with transaction(self.sessionmaker) as session:
            await session.execute(LOCK_TASK, {"task_id": run.task_id})
            fence = update(RUN).where(held(run.run_id, self.owner))
            fence = fence.values(lease_expires_at=self.lease_until())
            row = (await session.execute(fence.returning(RUN.c.cancel_requested))).first()
            if row is None:
                return Outcome.LEASE_LOST
            if not row[0]:
                deleted = await sweep(session, run, ending.now) if run.sweeps else 0
                await succeed_run(session, run, self.owner, ending, deleted)
        if row[0]:
            await self.cancel(run)
            return Outcome.CANCELLED
        return Outcome.FINISHED

    async def _quiet(
        self,
        run: LeasedRun,
        progress: dict[str, int],
        checkpoint: dict[str, Any],
        validators: list[tuple[str, Validator]],
        last: bool,
    ) -> Outcome:
        """Batch a page that writes no records; commit the batch when it is due."""
        quiet = run.quiet
        quiet.add(progress, checkpoint, validators)
        if not last and not quiet.due():
            return Outcome.CONTINUE
        write = self._page_write(run, [], 0, quiet.progress, checkpoint, [], last)
        outcome, _ = await self._commit(run, write, last)
        return outcome

    def _page_write(
        self,
        run: LeasedRun,
        rows: list[Row],
        distinct: int,
        progress: dict[str, int],
        checkpoint: dict[str, Any],
        own: list[tuple[str, Validator]],
        last: bool = False,
    ) -> PageWrite:
        """A commit of `rows` with the batched quiet pages (and a held page's rows) before
        them; the last page's also ends the run, but a sweep's (it ends in `succeed`,
        after its last page)."""
        rows, distinct, progress = run.quiet.folded(rows, distinct, progress)
        ending = self._ending(run, progress.get("pages", 0)) if last and not run.sweeps else None
        return PageWrite(
            rows=rows,
            distinct=distinct,
            progress=progress,
            checkpoint=checkpoint,
            validators=[*run.quiet.validators, *own],
            lease_until=self.lease_until(),
            now=ending.now if ending else utcnow(),
            ending=ending,
        )

    def _ending(self, run: LeasedRun, pages: int) -> Ending:
        """Success: the attempt as `attempts` shows it (with the `pages` the ending commit
        adds) and the task's new watermark."""
        moved = later(run.task_watermark, run.watermark) if run.moves_watermark else None
        entry = run.attempt_entry(None, counted=False)
        entry["pages"] += pages
        return Ending([*run.attempts, entry], utcnow(), moved)

    async def _commit(
        self, run: LeasedRun, write: PageWrite, last: bool = False
    ) -> tuple[Outcome, Written | None]:
        """Write; then the outcome, ending a sweeping run after its last page."""
        kept, run.quiet.kept = run.quiet.kept, []
        run.quiet.clear()  # before: a commit whose reply is lost must not be written again
        try:
            written = await self._write(run, write)
        finally:
            for page in kept:  # held pages' rows were in this write
                page.let_go()
        if written.cancel_requested is None:
            return Outcome.LEASE_LOST, None
        run.committed_pages += write.progress.get("pages", 0)
        run.checkpoint = write.checkpoint
        if written.cancel_requested:
            await self.cancel(run)
            return Outcome.CANCELLED, written
        if write.ending:
            return Outcome.FINISHED, written
        if last:  # a sweep: its last page is in, its sweep and end follow
            return await self.succeed(run), written
        return Outcome.CONTINUE, written

    # ---- ending a run otherwise, and its lease ----------------------------------------

    async def cancel(self, run: LeasedRun) -> None:
        """End the run as cancelled (its committed pages stay)."""
        async with autocommit(self.sessionmaker) as session:
            entry = run.attempt_entry(None, counted=False)
            result = await session.execute(end_run(run, self.owner, "cancelled", None, entry))
            ended = result.first()
        if ended is not None:
            run.totals = dict(zip(ENDED_STATS, ended, strict=True))

    async def fail(self, run: LeasedRun, error: dict[str, Any], entry: dict[str, Any]) -> None:
        """End the run as failed: its task's failure streak, auto-pause and events
        (`outcomes.fail_run`)."""
        async with transaction(self.sessionmaker) as session:
            await fail_run(session, run, self.owner, error, entry, self.auto_pause_after)

    async def retry_later(
        self, run: LeasedRun, error: dict[str, Any], entry: dict[str, Any], at: datetime
    ) -> int | None:
        """Park the run as `retrying` until `at`; returns the attempt number it will
        resume with, or None when the lease is no longer ours."""
        values = {
            "status": "retrying",
            "attempt": RUN.c.attempt + 1,
            "next_attempt_at": at,
            "error": error,
            "lease_owner": None,
            "lease_expires_at": None,
            "attempts": [*run.attempts, entry],
        }
        async with autocommit(self.sessionmaker) as session:
            result = await session.execute(
                update(RUN)
                .where(held(run.run_id, self.owner))
                .values(**values)
                .returning(RUN.c.attempt)
            )
            attempt: int | None = result.scalar_one_or_none()
        return attempt

    async def renew(self, run: LeasedRun) -> bool:
        """Extend the lease while a page takes long; False once it is not ours."""
        async with autocommit(self.sessionmaker) as session:
            result = await session.execute(
                update(RUN)
                .where(held(run.run_id, self.owner))
                .values(lease_expires_at=self.lease_until())
                .returning(RUN.c.id)
            )
            return result.scalar_one_or_none() is not None
