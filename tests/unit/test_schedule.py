"""`next_run_at`: the slots of `every_seconds` (phase, jitter) and of cron (time zones, DST)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from service.tasks.schedule import jitter, next_run_at, phase

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = {"every_seconds": 3600}
BERLIN = ZoneInfo("Europe/Berlin")


def walk(
    schedule: dict[str, Any], after: datetime, until: datetime, task: str = "tsk_a"
) -> list[datetime]:
    """Every slot after `after` up to `until`, each asked for after the previous one (as the
    scheduler does once it has fired a slot)."""
    slots: list[datetime] = []
    while True:
        at = next_run_at(schedule, task, after)
        assert at is not None
        if at > until:
            return slots
        slots.append(at)
        after = at


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def cron(expression: str, zone: str = "UTC") -> dict[str, Any]:
    return {"cron": expression, "timezone": zone, "jitter_seconds": 0}


# ---- every_seconds ---------------------------------------------------------------------


def test_no_schedule_has_no_slot() -> None:
    assert next_run_at(None, "tsk_a", T0) is None


def test_after_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_run_at(HOUR, "tsk_a", datetime(2026, 1, 1))


def test_every_slot_is_strictly_after_and_within_one_period() -> None:
    for seconds in (0, 1, 59, 600, 3599, 3600, 86_399):
        for micro in (0, 1, 999_999):
            after = T0 + timedelta(seconds=seconds, microseconds=micro)
            at = next_run_at(HOUR, "tsk_a", after)
            assert at is not None
            assert after < at <= after + timedelta(hours=1), after


def test_asked_exactly_at_a_slot_the_next_one_comes() -> None:
    slot = next_run_at(HOUR, "tsk_a", T0)
    assert slot is not None
    assert next_run_at(HOUR, "tsk_a", slot) == slot + timedelta(hours=1)
    assert next_run_at(HOUR, "tsk_a", slot - timedelta(microseconds=1)) == slot


def test_without_jitter_slots_are_exactly_every_apart() -> None:
    for every in (60, 3600, 7 * 86_400 + 13):
        schedule = {"every_seconds": every, "jitter_seconds": 0}
        slots = walk(schedule, T0, T0 + timedelta(seconds=every * 50))
        assert len(slots) == 50
        assert {b - a for a, b in itertools.pairwise(slots)} == {timedelta(seconds=every)}


def test_slots_do_not_drift_with_when_they_are_asked_for() -> None:
    """Asked late (a run that took long), the next slot is still on the task's grid."""
    on_time = next_run_at(HOUR, "tsk_a", T0)
    assert on_time is not None
    for late in (timedelta(seconds=1), timedelta(minutes=17, seconds=3), timedelta(hours=5)):
        at = next_run_at(HOUR, "tsk_a", on_time + late)
        assert at is not None
        assert (at - on_time) % timedelta(hours=1) == timedelta(0), late


def test_tasks_with_the_same_interval_spread_over_it() -> None:
    slots = {next_run_at(HOUR, f"tsk_{n}", T0) for n in range(200)}
    assert len(slots) > 150  # 200 ids over 3600 seconds: a few may share a second
    offsets = sorted((at - T0).total_seconds() for at in slots if at)
    assert offsets[0] < 600
    assert offsets[-1] > 3000


def test_the_phase_is_stable_across_processes() -> None:
    """A fixed value: the API and the scheduler (other processes, other versions) must agree,
    which Python's per-process `hash()` would not."""
    assert next_run_at(HOUR, "tsk_golden", T0) == utc(2026, 1, 1, 0, 19, 15)
    assert next_run_at({**HOUR, "jitter_seconds": 600}, "tsk_golden", T0) == utc(
        2026, 1, 1, 0, 28, 28
    )


def test_jitter_delays_each_slot_within_bounds() -> None:
    jitter = 600
    starts = walk(HOUR, T0, T0 + timedelta(days=10))
    # From the moment the first slot's jitter ends, the next firing is the second slot's.
    fired = walk(
        {**HOUR, "jitter_seconds": jitter},
        starts[0] + timedelta(seconds=jitter),
        T0 + timedelta(days=11),
    )
    delays = [(at - start).total_seconds() for start, at in zip(starts[1:], fired, strict=False)]
    assert len(delays) == len(starts) - 1
    assert all(0 <= delay <= jitter for delay in delays), delays
    assert len(set(delays)) > 100  # each slot has its own delay
    assert max(delays) > jitter * 0.9
    assert min(delays) < jitter * 0.1


def test_jitter_is_deterministic_whenever_it_is_asked() -> None:
    schedule = {"every_seconds": 3600, "jitter_seconds": 1800}
    first = next_run_at(schedule, "tsk_a", T0)
    assert first is not None
    second = next_run_at(schedule, "tsk_a", first)
    assert second is not None
    step = (second - first) / 25
    for n in range(25):
        assert next_run_at(schedule, "tsk_a", first + step * n) == second
    assert next_run_at(schedule, "tsk_b", first) != second


@pytest.mark.parametrize(
    ("every", "jitter_seconds"),
    # The last: not accepted by the schema, but a schedule stored before must not break.
    [(60, 0), (60, 59), (3600, 1800), (60, 150)],
)
def test_the_slot_is_the_first_firing_of_any_period_after(every: int, jitter_seconds: int) -> None:
    schedule = {"every_seconds": every, "jitter_seconds": jitter_seconds}
    offset = phase("tsk_a", every)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    base = int(T0.timestamp()) // every
    firings = [
        epoch + timedelta(seconds=offset + k * every + jitter("tsk_a", k, jitter_seconds))
        for k in range(base - 5, base + 60)
    ]
    for step in range(0, 40 * every, every // 7 + 1):
        after = T0 + timedelta(seconds=step, microseconds=250_000)
        assert next_run_at(schedule, "tsk_a", after) == min(at for at in firings if at > after)


def test_the_answer_is_utc_whatever_zone_after_is_in() -> None:
    local = T0.astimezone(ZoneInfo("Asia/Kolkata"))
    at = next_run_at(HOUR, "tsk_a", local)
    assert at == next_run_at(HOUR, "tsk_a", T0)
    assert at is not None
    assert at.tzinfo is UTC


# ---- cron ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        {"cron": "61 * * * *"},  # stored before crons were validated
        {"cron": "0 6 * * *", "timezone": "Nowhere/Land"},
        {"timezone": "UTC"},
    ],
)
def test_a_schedule_that_cannot_be_evaluated_is_a_value_error(schedule: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"cron|every_seconds"):
        next_run_at(schedule, "tsk_a", T0)


def test_cron_gives_the_next_matching_minute_strictly_after() -> None:
    daily = cron("0 6 * * *")
    assert next_run_at(daily, "tsk_a", utc(2026, 1, 1, 5, 59, 59)) == utc(2026, 1, 1, 6)
    assert next_run_at(daily, "tsk_a", utc(2026, 1, 1, 6)) == utc(2026, 1, 2, 6)
    assert next_run_at(daily, "tsk_a", utc(2026, 1, 1, 6, 0, 0, 1)) == utc(2026, 1, 2, 6)
    assert next_run_at({"cron": "*/15 * * * *"}, "tsk_a", utc(2026, 1, 1, 6, 1)) == utc(
        2026, 1, 1, 6, 15
    )


def test_cron_results_are_utc() -> None:
    at = next_run_at(cron("0 9 * * *", "Asia/Tokyo"), "tsk_a", utc(2025, 12, 31, 23))
    assert at == utc(2026, 1, 1, 0)  # 09:00 in Tokyo (UTC+9)
    assert at is not None
    assert at.tzinfo is UTC


def test_weekdays_in_new_york_skip_the_weekend() -> None:
    schedule = cron("0 9 * * 1-5", "America/New_York")
    friday_after_nine = utc(2026, 1, 9, 14, 30)  # 09:30 EST
    assert next_run_at(schedule, "tsk_a", friday_after_nine) == utc(2026, 1, 12, 14)  # Monday
    slots = walk(schedule, utc(2026, 1, 4), utc(2026, 1, 18))
    assert [at.astimezone(ZoneInfo("America/New_York")).strftime("%a %H:%M") for at in slots] == [
        f"{day} 09:00" for day in ["Mon", "Tue", "Wed", "Thu", "Fri"] * 2
    ]


def test_a_time_that_does_not_exist_fires_once_at_the_next_valid_instant() -> None:
    """Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day."""
    slots = walk(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 3, 28, 12), utc(2026, 3, 31))
    assert slots == [
        utc(2026, 3, 29, 1),  # 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    assert slots[0].astimezone(BERLIN).strftime("%H:%M %Z") == "03:00 CEST"


def test_a_time_that_occurs_twice_fires_once() -> None:
    """Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice."""
    schedule = cron("30 2 * * *", "Europe/Berlin")
    slots = walk(schedule, utc(2026, 10, 24, 12), utc(2026, 10, 27))
    assert slots == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first time
        utc(2026, 10, 26, 1, 30),  # 02:30 CET, the next day
    ]
    # Asked during the repeated hour (02:10 CET), the second 02:30 is not a slot either.
    assert next_run_at(schedule, "tsk_a", utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)


def test_a_wildcard_hour_fires_at_every_real_instant_of_the_repeated_hour() -> None:
    slots = walk(
        cron("*/30 * * * *", "Europe/Berlin"), utc(2026, 10, 24, 23, 10), utc(2026, 10, 25, 2)
    )
    assert slots == [utc(2026, 10, 24, 23, 30) + timedelta(minutes=30 * n) for n in range(6)]
    assert [at.astimezone(BERLIN).strftime("%H:%M %Z") for at in slots] == [
        "01:30 CEST",
        "02:00 CEST",
        "02:30 CEST",
        "02:00 CET",
        "02:30 CET",
        "03:00 CET",
    ]


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        ("Europe/Berlin", utc(2026, 3, 28, 20)),
        ("Europe/Berlin", utc(2026, 10, 24, 20)),
        ("America/New_York", utc(2026, 3, 8, 2)),
        ("America/New_York", utc(2026, 11, 1, 2)),
    ],
)
@pytest.mark.parametrize("expression", ["30 2 * * *", "0 * * * *", "*/20 1-3 * * *"])
def test_asked_at_any_moment_across_a_dst_change_the_answer_agrees_with_the_walk(
    zone: str, start: datetime, expression: str
) -> None:
    schedule = cron(expression, zone)
    slots = walk(schedule, start, start + timedelta(days=3))
    for minutes in range(0, 30 * 60, 7):
        after = start + timedelta(minutes=minutes, seconds=13)
        assert next_run_at(schedule, "tsk_a", after) == min(at for at in slots if at > after), after
