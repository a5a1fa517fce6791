"""Daily summaries: samples onto local calendar days, and sources not counted twice.

Pure arithmetic on plain values, unit-tested without a database.

- **Local day.** Each sample falls on days by its own zone: its IANA `timezone` (DST
  included), else its `tz_offset_minutes`, else UTC. A trip across zones puts each
  sample on its own local day.
- **Midnight split.** A cumulative sample spanning local midnight is split between the
  days in proportion to its time in each (23:50 to 00:10, 400 steps: 200 and 200).
- **Sleep days** run from 18:00 to 18:00 local and are named for the day they end, the
  wake-up day: a night from 23:00 to 07:00 is one day's sleep, not two halves.
- **Discrete** readings (heart rate, mass…) fall on the day of their start and give
  min/avg/max/count over every source: a reading measures a state, and two sources'
  readings do not add up to more of anything.
- **Source priority** (cumulative and sleep, per sleep stage). Sources are taken in
  order: the user's list (`PUT /v1/health/users/{user_id}/sources`) first, then the
  others by how much they recorded that day (most first, then by name). Time already
  covered by the samples of a source earlier in that order is not counted again: a
  sample partly covered counts only its uncovered part, in proportion. The phone's
  steps under the watch's are dropped; the phone's steps while the watch was off count.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

from service.health.types import Kind

NO_SHIFT = timedelta(0)
SLEEP_SHIFT = timedelta(hours=6)
"""A sleep day starts at 18:00 the evening before: 6 hours ahead of midnight."""


@dataclass(frozen=True, slots=True)
class Span:
    """A stored sample as the summary sees it."""

    source: str
    start: datetime
    end: datetime
    value: float
    zone: tzinfo
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class Piece:
    """The part of a sample on one day; times are POSIX seconds."""

    source: str
    start: float
    end: float
    value: float


@dataclass(frozen=True, slots=True)
class Day:
    date: date
    sum: float | None = None
    min: float | None = None
    avg: float | None = None
    max: float | None = None
    count: int | None = None
    stages: dict[str, float] | None = None
    sources: dict[str, float] | None = None


@lru_cache(maxsize=1024)
def zone_of(tz_offset_minutes: int | None, timezone_name: str | None) -> tzinfo:
    if timezone_name is not None:
        return ZoneInfo(timezone_name)
    if tz_offset_minutes is not None:
        return timezone(timedelta(minutes=tz_offset_minutes))
    return UTC


def day_of(moment: datetime, zone: tzinfo, shift: timedelta = NO_SHIFT) -> date:
    return (moment.astimezone(zone).replace(tzinfo=None) + shift).date()


def day_start(day: date, zone: tzinfo, shift: timedelta = NO_SHIFT) -> datetime:
    """The instant `day` begins in `zone` (its local midnight, moved earlier by `shift`)."""
    wall = datetime.combine(day, time()) - shift
    return wall.replace(tzinfo=zone).astimezone(UTC)


def split(span: Span, shift: timedelta = NO_SHIFT) -> list[tuple[date, Piece]]:
    """The sample's part in each local day, its value in proportion to its time there."""
    day = day_of(span.start, span.zone, shift)
    total = (span.end - span.start).total_seconds()
    if total <= 0:
        at = span.start.timestamp()
        return [(day, Piece(span.source, at, at, span.value))]
    pieces: list[tuple[date, Piece]] = []
    cursor = span.start
    while cursor < span.end:
        boundary = min(span.end, day_start(day + timedelta(days=1), span.zone, shift))
        if boundary > cursor:
            share = span.value * (boundary - cursor).total_seconds() / total
            pieces.append(
                (day, Piece(span.source, cursor.timestamp(), boundary.timestamp(), share))
            )
            cursor = boundary
        day += timedelta(days=1)
    return pieces


# ---- source priority ------------------------------------------------------------------


class Coverage:
    """A union of time intervals, kept sorted and disjoint."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def uncovered(self, piece: Piece) -> float:
        """The fraction of the piece outside the union (an instant: 0 or 1)."""
        first = bisect_right(self.ends, piece.start)
        if piece.end <= piece.start:
            inside = first < len(self.starts) and self.starts[first] <= piece.start
            return 0.0 if inside else 1.0
        overlap = 0.0
        for i in range(first, len(self.starts)):
            if self.starts[i] >= piece.end:
                break
            overlap += min(piece.end, self.ends[i]) - max(piece.start, self.starts[i])
        return max(0.0, 1.0 - overlap / (piece.end - piece.start))

    def add(self, pieces: Iterable[Piece]) -> None:
        intervals = sorted(
            [*zip(self.starts, self.ends, strict=True)]
            + [(p.start, p.end) for p in pieces if p.end > p.start]
        )
        starts: list[float] = []
        ends: list[float] = []
        for start, end in intervals:
            if ends and start <= ends[-1]:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        self.starts, self.ends = starts, ends


def ranked(by_source: dict[str, list[Piece]], priority: Sequence[str]) -> list[str]:
    """The user's sources in their order, then the rest by the most recorded that day."""
    listed = [source for source in priority if source in by_source]
    rest = sorted(
        (source for source in by_source if source not in priority),
        key=lambda source: (-sum(p.value for p in by_source[source]), source),
    )
    return listed + rest


def deduplicated(pieces: Iterable[Piece], priority: Sequence[str]) -> dict[str, float]:
    """What each source counts once time covered by a higher one is taken out."""
    by_source: dict[str, list[Piece]] = defaultdict(list)
    for piece in pieces:
        by_source[piece.source].append(piece)
    coverage = Coverage()
    counted: dict[str, float] = {}
    for source in ranked(by_source, priority):
        own = by_source[source]
        counted[source] = sum(p.value * coverage.uncovered(p) for p in own)
        coverage.add(own)
    return counted


# ---- one summary per kind -------------------------------------------------------------


def summarize(
    kind: Kind, spans: Iterable[Span], first: date, last: date, priority: Sequence[str] = ()
) -> list[Day]:
    """One `Day` per local day in [first, last] with data, oldest first."""
    if kind is Kind.DISCRETE:
        days = _discrete(spans)
    elif kind is Kind.CUMULATIVE:
        days = _cumulative(spans, priority)
    else:
        days = _sleep(spans, priority)
    return [days[day] for day in sorted(days) if first <= day <= last]


def _discrete(spans: Iterable[Span]) -> dict[date, Day]:
    values: dict[date, list[float]] = defaultdict(list)
    sources: dict[date, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for span in spans:
        day = day_of(span.start, span.zone)
        values[day].append(span.value)
        sources[day][span.source] += 1
    return {
        day: Day(
            day,
            min=min(found),
            avg=_round(sum(found) / len(found)),
            max=max(found),
            count=len(found),
            sources=dict(sources[day]),
        )
        for day, found in values.items()
    }


def _cumulative(spans: Iterable[Span], priority: Sequence[str]) -> dict[date, Day]:
    pieces: dict[date, list[Piece]] = defaultdict(list)
    for span in spans:
        for day, piece in split(span):
            pieces[day].append(piece)
    out: dict[date, Day] = {}
    for day, found in pieces.items():
        counted = deduplicated(found, priority)
        out[day] = Day(day, sum=_round(sum(counted.values())), sources=_rounded(counted))
    return out


def _sleep(spans: Iterable[Span], priority: Sequence[str]) -> dict[date, Day]:
    pieces: dict[tuple[date, str], list[Piece]] = defaultdict(list)
    for span in spans:
        for day, piece in split(span, SLEEP_SHIFT):
            pieces[day, span.stage or ""].append(piece)
    stages: dict[date, dict[str, float]] = defaultdict(dict)
    sources: dict[date, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (day, stage), found in pieces.items():
        counted = deduplicated(found, priority)
        stages[day][stage] = _round(sum(counted.values()))
        for source, seconds in counted.items():
            sources[day][source] += seconds
    return {
        day: Day(day, stages=dict(sorted(found.items())), sources=_rounded(sources[day]))
        for day, found in stages.items()
    }


def _round(value: float) -> float:
    return round(value, 3)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {source: _round(value) for source, value in sorted(values.items())}
