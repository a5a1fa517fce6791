"""The daily rollup (`service.models.HealthDaily`): which computed days a write makes
stale, and which of a summary's days must be computed.

Why a rollup: a year of minute-level heart rate is 525,600 samples, and summarising
them in Python on every `GET /v1/health/daily` takes seconds; the year's 366 computed
rows read in milliseconds (bench/health.py, bench/RESULTS.md). Why whole computed days
and not sums per source: the de-duplication across sources works on the samples' time
intervals, which no per-source sum keeps.

How it stays correct:
- **Invalidated with every write.** `store_samples` deletes, in the transaction that
  writes the samples and under the user's lock, the rows of every day the old and the
  new version of each written sample can fall on. A sample's local day is within one
  day of its UTC date (offsets are within ±14 h, sleep's 18:00 start adds 6 h), so the
  UTC dates of its start and end widened by a day cover it, in any zone: a late sample,
  an update moving a sample, a deletion (the tombstone's old version) each clear the
  days they touched, and those alone.
- **Filled under the same lock.** A summary that finds days missing takes the user's
  lock, reads the rows again, computes the missing days from the samples and stores
  them. No chunk can commit between that read and that store, so a stored day is never
  older than the samples (an unlocked fill could store a day computed just before a
  chunk's commit deleted it).
- **Source priority** changes every day: setting it deletes all of the user's rows.

Days are computed independently (a day's summary depends only on the samples on it),
so computing only the missing ones gives what computing the whole range would.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from service.health.merge import Stored
from service.health.normalize import Normalized

ONE_DAY = timedelta(days=1)

Touched = dict[str, tuple[date, date]]
"""Per type, the first and last day a chunk's writes may have changed."""


def touched(writes: Iterable[Normalized], before: Iterable[Stored | None]) -> Touched:
    """The days (per type, as one range) the written samples' new and old versions can
    fall on. One range per type: a chunk is usually a few consecutive days, and a
    range deleted too wide only costs a recomputation.

    A normalised sample's times are UTC ISO strings, so its UTC date is their first ten
    characters, and those compare as the dates do: no time is parsed (10,000 parses were
    a tenth of the worker's time on a batch)."""
    dates: dict[str, tuple[str, str]] = {}

    def widen(type_: str, first: str, last: str) -> None:
        if type_ in dates:
            low, high = dates[type_]
            first, last = min(first, low), max(last, high)
        dates[type_] = (first, last)

    for sample, old in zip(writes, before, strict=True):
        if sample.type is not None and sample.start is not None:
            widen(sample.type, sample.start[:10], (sample.end or sample.start)[:10])
        if old is not None and old.type is not None and old.start is not None:
            end = old.end or old.start
            widen(old.type, old.start.date().isoformat(), end.date().isoformat())
    return {
        type_: (date.fromisoformat(first) - ONE_DAY, date.fromisoformat(last) + ONE_DAY)
        for type_, (first, last) in dates.items()
    }


def missing_ranges(first: date, last: date, have: Iterable[date]) -> list[tuple[date, date]]:
    """The runs of consecutive days in [first, last] not in `have`."""
    present = set(have)
    ranges: list[tuple[date, date]] = []
    day = first
    while day <= last:
        if day in present:
            day += ONE_DAY
            continue
        start = day
        while day + ONE_DAY <= last and day + ONE_DAY not in present:
            day += ONE_DAY
        ranges.append((start, day))
        day += ONE_DAY
    return ranges
