"""The daily summary's arithmetic: local days, the midnight split, sleep days, priority."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo

import pytest

from service.health.daily import Day, Span, split, summarize, zone_of
from service.health.types import Kind

BERLIN = zone_of(None, "Europe/Berlin")
PLUS_ONE = zone_of(60, None)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def span(
    start: str,
    end: str,
    value: float,
    source: str = "watch",
    zone: tzinfo = UTC,
    stage: str | None = None,
) -> Span:
    return Span(source, at(start), at(end), value, zone, stage)


def sums(days: list[Day]) -> dict[str, float | None]:
    return {day.date.isoformat(): day.sum for day in days}


def cumulative(*spans: Span, priority: tuple[str, ...] = ()) -> list[Day]:
    return summarize(Kind.CUMULATIVE, spans, date(2026, 1, 1), date(2026, 12, 31), priority)


def test_a_sample_spanning_local_midnight_is_split_in_proportion() -> None:
    days = cumulative(
        span("2026-12-03T23:50:00+01:00", "2026-12-04T00:10:00+01:00", 400, zone=PLUS_ONE)
    )
    assert sums(days) == {"2026-12-03": 200, "2026-12-04": 200}
    uneven = cumulative(
        span("2026-12-03T23:45:00+01:00", "2026-12-04T00:15:00+01:00", 300, zone=PLUS_ONE)
    )
    assert sums(uneven) == {"2026-12-03": 150, "2026-12-04": 150}
    three = cumulative(span("2026-12-03T23:00:00Z", "2026-12-04T01:00:00Z", 100))
    assert sums(three) == {"2026-12-03": 50, "2026-12-04": 50}


def test_the_day_is_the_samples_own_not_utcs() -> None:
    # 23:30 UTC is already the next day in Berlin.
    days = cumulative(span("2026-12-03T23:30:00Z", "2026-12-03T23:40:00Z", 10, zone=BERLIN))
    assert sums(days) == {"2026-12-04": 10}


def test_a_trip_across_zones_puts_each_sample_on_its_own_local_day() -> None:
    tokyo, new_york = zone_of(None, "Asia/Tokyo"), zone_of(None, "America/New_York")
    days = cumulative(
        span("2026-06-01T20:00:00Z", "2026-06-01T20:10:00Z", 100, zone=tokyo),  # 06-02 05:00
        span("2026-06-02T02:00:00Z", "2026-06-02T02:10:00Z", 7, zone=new_york),  # 06-01 22:00
    )
    assert sums(days) == {"2026-06-01": 7, "2026-06-02": 100}


def test_the_midnight_split_follows_dst_in_an_iana_zone() -> None:
    # Berlin's 2026-03-29 has 23 hours: a sample over the whole day and one hour on each
    # side is split 1 : 23 : 1.
    whole = span("2026-03-28T23:00:00+01:00", "2026-03-30T01:00:00+02:00", 2500, zone=BERLIN)
    assert sums(cumulative(whole)) == {"2026-03-28": 100, "2026-03-29": 2300, "2026-03-30": 100}


def test_an_instant_falls_on_the_day_it_happens() -> None:
    pieces = split(span("2026-12-04T00:00:00Z", "2026-12-04T00:00:00Z", 5))
    assert [(day.isoformat(), piece.value) for day, piece in pieces] == [("2026-12-04", 5)]


def test_time_covered_by_a_higher_priority_source_is_not_counted_again() -> None:
    watch = span("2026-12-04T10:00:00Z", "2026-12-04T11:00:00Z", 6000, "watch")
    phone = span("2026-12-04T10:30:00Z", "2026-12-04T11:30:00Z", 3000, "phone")
    [day] = cumulative(watch, phone, priority=("watch", "phone"))
    # The phone's first half hour is under the watch's hour: only its second half counts.
    assert day.sum == 7500 and day.sources == {"phone": 1500, "watch": 6000}
    [reverse] = cumulative(watch, phone, priority=("phone", "watch"))
    assert reverse.sum == 6000 and reverse.sources == {"phone": 3000, "watch": 3000}


def test_without_a_priority_the_source_with_the_most_that_day_wins() -> None:
    watch = span("2026-12-04T10:00:00Z", "2026-12-04T11:00:00Z", 6000, "watch")
    phone = span("2026-12-04T10:00:00Z", "2026-12-04T11:00:00Z", 5000, "phone")
    extra = span("2026-12-04T12:00:00Z", "2026-12-04T12:10:00Z", 800, "phone")
    [day] = cumulative(watch, phone, extra)
    # The phone recorded 5,800 that day, the watch 6,000: the watch first, then the
    # phone's uncovered 800.
    assert day.sum == 6800 and day.sources == {"phone": 800, "watch": 6000}


def test_sources_not_in_the_list_come_after_it() -> None:
    watch = span("2026-12-04T10:00:00Z", "2026-12-04T11:00:00Z", 100, "watch")
    ring = span("2026-12-04T10:00:00Z", "2026-12-04T11:00:00Z", 900, "ring")
    [day] = cumulative(watch, ring, priority=("watch",))
    assert day.sources == {"ring": 0, "watch": 100}


def test_discrete_types_give_min_avg_max_count_over_every_source() -> None:
    readings = [
        span("2026-12-04T08:00:00Z", "2026-12-04T08:00:00Z", 60, "watch"),
        span("2026-12-04T09:00:00Z", "2026-12-04T09:00:00Z", 90, "watch"),
        span("2026-12-04T09:00:00Z", "2026-12-04T09:00:00Z", 75, "ring"),
        span("2026-12-04T23:30:00Z", "2026-12-04T23:30:00Z", 50, "ring", zone=BERLIN),
    ]
    first, second = summarize(Kind.DISCRETE, readings, date(2026, 12, 4), date(2026, 12, 5))
    assert (first.min, first.avg, first.max, first.count) == (60, 75, 90, 3)
    assert first.sources == {"watch": 2, "ring": 1}
    assert (second.date, second.count) == (date(2026, 12, 5), 1)


def test_a_night_is_the_sleep_of_the_day_it_ends_with_seconds_per_stage() -> None:
    night = [
        span(
            "2026-12-03T23:00:00+01:00",
            "2026-12-04T07:00:00+01:00",
            8 * 3600,
            "watch",
            BERLIN,
            "in_bed",
        ),
        span(
            "2026-12-03T23:30:00+01:00", "2026-12-04T02:00:00+01:00", 9000, "watch", BERLIN, "light"
        ),
        span(
            "2026-12-04T02:00:00+01:00", "2026-12-04T03:00:00+01:00", 3600, "watch", BERLIN, "deep"
        ),
        span(
            "2026-12-04T14:00:00+01:00", "2026-12-04T14:30:00+01:00", 1800, "phone", BERLIN, "light"
        ),
        # The phone's in_bed under the watch's is not counted again.
        span(
            "2026-12-03T23:00:00+01:00",
            "2026-12-04T07:30:00+01:00",
            8.5 * 3600,
            "phone",
            BERLIN,
            "in_bed",
        ),
    ]
    [day] = summarize(Kind.CATEGORY, night, date(2026, 12, 4), date(2026, 12, 4), ["watch"])
    assert day.date == date(2026, 12, 4)
    assert day.stages == {"deep": 3600, "in_bed": 8.5 * 3600, "light": 9000 + 1800}
    assert day.sources == {"phone": 1800 + 1800, "watch": 8 * 3600 + 9000 + 3600}


def test_days_outside_the_range_are_left_out() -> None:
    spans = [span("2026-12-03T23:00:00Z", "2026-12-04T01:00:00Z", 100)]
    days = summarize(Kind.CUMULATIVE, spans, date(2026, 12, 4), date(2026, 12, 4))
    assert sums(days) == {"2026-12-04": 50}


@pytest.mark.parametrize("minutes", [1, 7, 60])
def test_per_minute_steps_from_two_sources_add_up_to_the_better_one(minutes: int) -> None:
    start = at("2026-12-04T00:00:00Z")
    step = timedelta(minutes=minutes)
    watch = [Span("watch", start + i * step, start + (i + 1) * step, 10, UTC) for i in range(20)]
    phone = [Span("phone", start + i * step, start + (i + 1) * step, 9, UTC) for i in range(20)]
    [day] = cumulative(*watch, *phone)
    assert day.sum == 200 and day.sources == {"phone": 0, "watch": 200}
