"""Which rollup days a write makes stale, and which days a summary must compute."""

from __future__ import annotations

from datetime import UTC, date, datetime

from service.health.merge import Stored
from service.health.normalize import normalize
from service.health.rollup import missing_ranges, touched
from tests.health.helpers import steps

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def test_a_write_stales_the_days_around_its_new_and_its_old_version() -> None:
    new = normalize(steps("a", 10, "2026-12-02T23:50:00Z", "2026-12-03T00:10:00Z"), "u", NOW)
    old = Stored("h", None, False, "steps", datetime(2026, 11, 20, 8, tzinfo=UTC), None)
    assert touched([new], [old]) == {"steps": (date(2026, 11, 19), date(2026, 12, 4))}
    assert touched([new], [None]) == {"steps": (date(2026, 12, 1), date(2026, 12, 4))}


def test_a_deletion_stales_the_days_of_what_it_deletes_and_types_stay_apart() -> None:
    gone = normalize({"id": "a", "source": "w", "deleted": True}, "u", NOW)
    heart = Stored("h", None, False, "heart_rate", datetime(2026, 12, 1, 8, tzinfo=UTC))
    assert touched([gone], [heart]) == {"heart_rate": (date(2026, 11, 30), date(2026, 12, 2))}
    assert touched([gone], [None]) == {}


def test_missing_ranges_are_the_runs_of_absent_days() -> None:
    have = [date(2026, 12, 2), date(2026, 12, 3), date(2026, 12, 6)]
    assert missing_ranges(date(2026, 12, 1), date(2026, 12, 7), have) == [
        (date(2026, 12, 1), date(2026, 12, 1)),
        (date(2026, 12, 4), date(2026, 12, 5)),
        (date(2026, 12, 7), date(2026, 12, 7)),
    ]
    assert missing_ranges(date(2026, 12, 2), date(2026, 12, 3), have) == []
