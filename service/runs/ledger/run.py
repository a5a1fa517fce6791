"""The values a ledger deals in: the run it holds, one commit, and their outcomes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.health.mapping import HealthMapping
from service.models.types import utcnow
from service.notifications.catalog import RunSubject
from service.runs.ledger.progress import QuietPages
from service.sync import Row, Validator, Watermark


class Outcome(enum.Enum):
    """What a commit did to the run, for the runner to act on."""

    CONTINUE = "continue"
    """Committed (or batched); fetch the next page."""
    FINISHED = "finished"
    """The last page committed and the run succeeded with it."""
    CANCELLED = "cancelled"
    """A cancel was asked for: the page committed, then the run ended as cancelled."""
    LEASE_LOST = "lease_lost"
    """The run is not this worker's any more (taken over, ended, deleted): nothing of
    this commit was written."""


@dataclass(slots=True)
class LeasedRun:
    """A run this worker holds the lease of, and what its task said at the claim."""

    run_id: str
    task_id: str
    tenant_id: str
    user_id: str | None
    trigger: str
    attempt: int
    attempts: list[dict[str, Any]]
    """The attempts recorded so far (only the lease holder writes them)."""
    cancel_requested: bool
    checkpoint: dict[str, Any]
    options: dict[str, Any]
    source: dict[str, Any]
    """As stored: credentials masked (the runner unseals them)."""
    auth_ciphertext: str | None
    limits: dict[str, Any]
    retry: dict[str, Any]
    task_watermark: Watermark | None
    record_seq: int
    prior_failures: int
    """The task's `consecutive_failures` at the claim: only the end of its one active run
    changes it, so it is still the streak this run's success would end."""
    health_mapping: HealthMapping | None = None
    """The task's mapping of records to health samples: each page's changed records'
    samples commit with them (`ledger.samples`)."""
    mapping_error: str | None = None
    """Why the stored mapping cannot be applied: the run fails with it, fetching nothing."""
    started_at: datetime = field(default_factory=utcnow)
    """When this attempt began."""
    watermark: Watermark | None = None
    """The largest incremental cursor this run has seen (checkpointed with each page)."""
    compares_first: bool = True
    """Compare the next decoded page with what is stored, read-only, before writing it?
    Yes while pages come back unchanged (a resync); no on a task with no records yet and
    after a page that changed something (its rows go straight to the upsert), nor in a
    sweep (every row must be written, to mark it seen)."""
    fresh: bool = False
    """The task had no records when this attempt began and no page has shown a key twice:
    every row is new (PostgreSQL's ledger inserts such pages with no conflict clause,
    SQLite's inserts them and counts what the insert wrote). Not for a sweep."""
    committed_pages: int = 0
    """Pages this attempt committed: an attempt that committed none is a failed one."""
    quiet: QuietPages = field(default_factory=QuietPages)
    previous_owner: str | None = None
    """Who held the run's lease before this claim: another worker's identity when this
    claim took over a run whose worker stopped renewing its lease (None otherwise)."""
    totals: dict[str, int] | None = None
    """The run's counters over all its attempts (`ENDED_STATS`), once this worker wrote
    its end: read by the statement that ends it, for the run's metrics and log line."""

    @property
    def first_started_at(self) -> datetime:
        """When the run's first attempt began (this one's, if it is the first)."""
        if self.attempts:
            return datetime.fromisoformat(self.attempts[0]["started_at"])
        return self.started_at

    @property
    def done(self) -> bool:
        """The last page was committed before an interruption: only the end is left."""
        return bool(self.checkpoint.get("done"))

    @property
    def subject(self) -> RunSubject:
        """This run, as the events about it name it."""
        return RunSubject(self.task_id, self.user_id, self.run_id, self.trigger, self.attempt)

    @property
    def sweeps(self) -> bool:
        """This run detects deletions: it marks every record it sees and, at its end,
        deletes the ones it did not. Decided once, when the run was triggered
        (`runs.service`), so a task changed between attempts cannot make a run sweep
        records an earlier attempt saw without marking them."""
        return bool(self.options.get("sweep"))

    @property
    def remaps(self) -> bool:
        """A full refresh of a mapped task maps every record again, changed or not (the
        way to apply a changed mapping to stored records); samples that come out as
        stored write nothing."""
        return self.health_mapping is not None and bool(self.options.get("full_refresh"))

    @property
    def rereads(self) -> bool:
        """Stored validators and digests are ignored: a task with no records has none
        that could match, a full refresh reads every page again, and a sweep must see
        every key."""
        return self.record_seq == 0 or bool(self.options.get("full_refresh")) or self.sweeps

    @property
    def moves_watermark(self) -> bool:
        """Incremental runs move the task's watermark; backfills leave it alone."""
        return self.source.get("incremental") is not None and "backfill" not in self.options

    def attempt_entry(self, error: dict[str, Any] | None, *, counted: bool) -> dict[str, Any]:
        """This attempt as the run's `attempts` list shows it: `pages` it committed, and
        whether it `counted` toward `retry.max_attempts` (see the runner)."""
        return {
            "attempt": self.attempt,
            "started_at": self.started_at.isoformat(),
            "finished_at": utcnow().isoformat(),
            "pages": self.committed_pages,
            "counted": counted,
            "error": error,
        }


@dataclass(frozen=True, slots=True)
class Ending:
    """How a run ends with the page that carries this: success, the task's outcome."""

    attempts: list[dict[str, Any]]
    now: datetime
    watermark: Watermark | None
    """The task's new watermark; None leaves it alone."""


@dataclass(frozen=True, slots=True)
class PageWrite:
    """One commit: a page's rows (none for a batch of quiet pages) and the progress of
    every page it covers."""

    rows: list[Row]
    """Distinct keys, the last copy of each: every row the upsert is sent."""
    distinct: int
    """Distinct keys on the page: those not written count as unchanged."""
    progress: dict[str, int]
    """Counters to add besides what the write itself counts (inserted, updated,
    unchanged of these rows)."""
    checkpoint: dict[str, Any]
    validators: list[tuple[str, Validator]]
    lease_until: datetime
    now: datetime
    ending: Ending | None = None


@dataclass(frozen=True, slots=True)
class Written:
    changed: int
    """Rows inserted or changed."""
    cancel_requested: bool | None
    """None: the lease was not this worker's, and nothing was written."""


@dataclass(frozen=True, slots=True)
class Waiting:
    """A due run that waits for its tenant's cap on running runs (`RunLedger.wait_for_slot`)."""

    run_id: str
    tenant_id: str
    since: datetime
    """When the run was created: waiting runs of a tenant start oldest first."""
