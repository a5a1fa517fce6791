"""A health mapping applied to one record, without a database: the forms of time and
zone wearable APIs use, and what a record that does not fit gives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.health.mapping import HealthMapping, samples_of, usable

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def one(mapping: dict[str, Any], record: Any) -> tuple[list[Any], list[str]]:
    return samples_of(record, HealthMapping.model_validate(mapping), "tsk_1", "u_42", NOW)


STEPS: dict[str, Any] = {
    "type": "steps",
    "value_path": "summary.steps",
    "unit": "count",
    "start_path": "start",
    "end_path": "end",
    "id_path": "id",
}


def test_unix_seconds_in_a_constant_zone() -> None:
    record = {"id": 7, "start": 1_796_000_000, "end": 1_796_003_600, "summary": {"steps": 12}}
    [sample], rejected = one(STEPS | {"timezone": "Asia/Tokyo", "source": "band"}, record)
    assert rejected == []
    assert (sample.id, sample.source, sample.value, sample.timezone) == (
        "7:steps",
        "band",
        12,
        "Asia/Tokyo",
    )
    assert sample.start == "2026-11-30T00:53:20+00:00" and sample.end == "2026-11-30T01:53:20+00:00"


def test_a_local_time_with_an_offset_from_the_record() -> None:
    record: dict[str, Any] = {"id": "a", "start": "2026-12-01T08:00:00", "tz": "+05:30"}
    record["end"] = "2026-12-01T08:30"
    record["summary"] = {"steps": 100}
    [sample], _ = one(STEPS | {"timezone_path": "tz"}, record)
    assert sample.start == "2026-12-01T02:30:00+00:00"
    assert (sample.tz_offset_minutes, sample.timezone) == (330, None)


def test_without_a_zone_the_starts_own_offset_is_the_samples() -> None:
    record = {"id": "a", "start": "2026-12-01T08:00:00-08:00", "summary": {"steps": 1}}
    [sample], _ = one({**STEPS, "end_path": None}, record)
    assert (sample.start, sample.end, sample.tz_offset_minutes) == (
        "2026-12-01T16:00:00+00:00",
        "2026-12-01T16:00:00+00:00",
        -480,
    )


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            {"id": "a", "start": "2026-12-01T08:00:00Z", "end": "2026-12-01T09:00:00Z"},
            "steps: the record has no 'summary.steps' (value_path)",
        ),
        (
            {"id": "a", "start": "yesterday", "end": "x", "summary": {"steps": 1}},
            "steps: start_path: 'yesterday' is not an ISO 8601 time",
        ),
        (
            {
                "id": True,
                "start": "2026-12-01T08:00:00Z",
                "end": "2026-12-01T09:00:00Z",
                "summary": {"steps": 1},
            },
            "steps: id_path 'id' is not a string or an integer",
        ),
        (
            {
                "id": "a",
                "start": "2026-12-01T08:00:00Z",
                "end": "2026-12-01T09:00:00Z",
                "summary": {"steps": -3},
            },
            "steps: steps -3 count is negative",
        ),
        (
            {
                "id": "a",
                "start": "2026-12-01T08:00:00Z",
                "end": "2026-12-01T09:00:00Z",
                "summary": {"steps": 1},
                "tz": "Moon/Base",
            },
            "steps: time zone 'Moon/Base' is not an IANA zone or a UTC offset",
        ),
        ([1, 2], "steps: the record has no 'start' (start_path)"),
    ],
)
def test_a_record_that_does_not_fit_gives_a_reason_not_a_sample(record: Any, reason: str) -> None:
    accepted, rejected = one(STEPS | {"timezone_path": "tz"}, record)
    assert (accepted, rejected) == ([], [reason])


def test_items_take_their_own_fields_and_the_records_where_they_lack_them() -> None:
    mapping = {
        "type": "sleep",
        "items_path": "phases",
        "start_path": "from",
        "end_path": "to",
        "stage_path": "stage",
        "id_path": "id",
        "timezone_path": "zone",
    }
    record = {
        "id": "night_1",
        "zone": "Europe/Berlin",
        "phases": [
            {"from": "2026-12-01T23:00:00", "to": "2026-12-01T23:30:00", "stage": "light"},
            {
                "id": "p2",
                "from": "2026-12-01T23:30:00",
                "to": "2026-12-02T00:10:00",
                "stage": "deep",
            },
            {"from": "2026-12-02T00:10:00", "to": "2026-12-02T00:20:00", "stage": "dozing"},
        ],
    }
    accepted, rejected = one(mapping, record)
    assert [(s.id, s.value, s.stage) for s in accepted] == [
        ("night_1:sleep:2026-12-01T22:00:00Z", 1800, "light"),
        ("p2:sleep:2026-12-01T22:30:00Z", 2400, "deep"),
    ]
    assert rejected == ["sleep: sleep needs metadata.stage, one of awake, deep, in_bed, light, rem"]
    assert one(mapping, {"id": "n", "phases": None}) == ([], [])
    assert one(mapping, {"id": "n", "phases": {"a": 1}}) == (
        [],
        ["sleep: items_path 'phases' is not a list"],
    )


def test_a_stored_mapping_a_run_cannot_apply_says_why() -> None:
    with pytest.raises(ValueError, match=r"health_mapping\.h: Extra inputs are not permitted"):
        usable({"h": "H"}, "u_42")
    with pytest.raises(ValueError, match=r"health_mapping\.unit: unit 'kg' cannot be converted"):
        usable(STEPS | {"unit": "kg"}, "u_42")
    with pytest.raises(ValueError, match="needs a user_id"):
        usable(STEPS, None)
    assert usable(STEPS, "u_42").type == "steps"
