"""A page's progress: its counters, the earlier copies of a key it supersedes, and the
batch of quiet pages (pages that write no records) not yet committed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from service.sync import Page, Row, Validator


class QuietPages:
    """Progress of pages not yet committed: pages that wrote no records (304s,
    unchanged pages), and a first sync's pages held for the next one (`rows`).

    Such pages are safe to fetch again, so their counters and checkpoint are committed
    in batches (with the next page that writes, or every 50 pages / half a second),
    not one transaction each: that is most of what an unchanged or conditional resync
    would otherwise spend. Held pages' rows are written by the next commit, with its
    own (`folded`): a first sync then commits several pages a statement (see
    `RunLedger.FRESH_PAGES_PER_STATEMENT`).
    """

    MAX_PAGES = 50
    MAX_SECONDS = 0.5

    def __init__(self) -> None:
        self.progress: dict[str, int] = {}
        self.checkpoint: dict[str, Any] | None = None
        self.validators: list[tuple[str, Validator]] = []
        """New validators of these pages (page key, validator): their records are stored
        as they are, so they are as safe to commit late as the progress."""
        self.pages = 0
        self.since = 0.0
        self.rows: dict[str, Row] = {}
        """The held pages' rows, the last copy of each key, in page order."""
        self.distinct = 0
        """Distinct keys across the held pages (`PageWrite.distinct`): a key on two of
        them counts once (`_joined`)."""
        self.kept: list[Page] = []
        """The held pages: their bytes stay counted in the process's body budget until
        their rows are written or the attempt ends (`let_go`)."""

    def clear(self) -> None:
        """Forget the batch (it is being written); a held page's budget stays counted
        until `let_go`."""
        self.progress, self.checkpoint, self.validators, self.pages = {}, None, [], 0
        self.rows, self.distinct = {}, 0

    def let_go(self) -> None:
        """Give the held pages' share of the body budget back (written, or the attempt
        ended without writing them: they are fetched again then)."""
        kept, self.kept = self.kept, []
        for page in kept:
            page.let_go()

    def hold(
        self,
        page: Page,
        rows: dict[str, Row],
        distinct: int,
        progress: dict[str, int],
        checkpoint: dict[str, Any],
        validators: list[tuple[str, Validator]],
    ) -> None:
        """Keep a page's rows for the next commit (after the pages held already), with
        its progress; the page's bytes stay counted (`Page.keep`)."""
        if self.rows:
            rows, distinct, progress = self._joined(list(rows.values()), distinct, progress)
        self.add(progress, checkpoint, validators)
        self.rows, self.distinct = rows, distinct
        page.keep()
        self.kept.append(page)

    @property
    def held(self) -> int:
        """Pages held for the next commit."""
        return len(self.kept)

    def folded(
        self, rows: list[Row], distinct: int, progress: dict[str, int]
    ) -> tuple[list[Row], int, dict[str, int]]:
        """A commit's rows, distinct keys and progress with the held pages' before them."""
        if not self.rows:
            return rows, distinct, progress
        final, distinct, progress = self._joined(rows, distinct, progress)
        return list(final.values()), distinct, progress

    def _joined(
        self, rows: list[Row], distinct: int, progress: dict[str, int]
    ) -> tuple[dict[str, Row], int, dict[str, int]]:
        """`rows` after the held ones: a key on both is written once, as its later copy,
        and the held copy counts as an earlier copy of it does on one page
        (`last_copies`)."""
        both = [*self.rows.values(), *rows]
        final, counts = last_copies(both)
        repeated = len(both) - len(final)
        if repeated:
            progress = dict(progress)
            for name, count in counts.items():
                progress[name] = progress.get(name, 0) + count
        return final, self.distinct + distinct - repeated, progress

    def add(
        self,
        progress: dict[str, int],
        checkpoint: dict[str, Any],
        validators: list[tuple[str, Validator]],
    ) -> None:
        if not self.pages:
            self.since = time.monotonic()
        for name, amount in progress.items():
            self.progress[name] = self.progress.get(name, 0) + amount
        self.checkpoint = checkpoint
        self.validators.extend(validators)
        self.pages += 1

    def due(self) -> bool:
        return self.pages >= self.MAX_PAGES or time.monotonic() - self.since >= self.MAX_SECONDS

    def merged(self, progress: dict[str, int]) -> dict[str, int]:
        return {
            name: self.progress.get(name, 0) + progress.get(name, 0)
            for name in {*self.progress, *progress}
        }


def page_progress(page: Page, *, updated: int = 0, unchanged: int = 0) -> dict[str, int]:
    """A page's counters; `updated`/`unchanged` are what is known before any write (a
    write adds its own counts). A page whose bytes are the stored ones was not decoded:
    its records count as they did last time, all unchanged. A 304 counts none."""
    seen, rejected = page.records.seen, len(page.records.rejections)
    if page.same_as_before and page.known is not None:
        seen, rejected = page.known.records_seen, page.known.rejected
        unchanged = seen - rejected
    return {
        "pages": 1,
        "requests": page.requests,
        "not_modified": int(page.not_modified),
        "records_seen": seen,
        "rejected": rejected,
        "bytes": page.fetched.nbytes,
        "inserted": 0,
        "updated": updated,
        "unchanged": unchanged,
    }


def last_copies(rows: Sequence[Row]) -> tuple[dict[str, Row], dict[str, int]]:
    """The last copy of each key, and the counts of the earlier copies it supersedes
    (`unchanged` if equal to the last copy, else `updated`)."""
    final = {row.key: row for row in rows}
    counts = {"updated": 0, "unchanged": 0}
    if len(final) < len(rows):
        for row in rows:
            last = final[row.key]
            if row is not last:
                counts["unchanged" if row.hash == last.hash else "updated"] += 1
    return final, counts
