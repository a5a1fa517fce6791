"""What the API decides about one sample: conversions, plausibility, refusals."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.health import normalize as normalize_module
from service.health.normalize import Normalized, Rejected, normalize, normalize_all
from service.health.types import TYPES, Kind

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def sample(type_: str, value: float | None, unit: str | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "s1",
        "source": "watch",
        "type": type_,
        "value": value,
        "unit": unit,
        "start": "2026-12-04T08:00:00Z",
        **extra,
    }
    return {key: value for key, value in body.items() if value is not None}


def accepted(raw: dict[str, Any]) -> Normalized:
    return normalize(raw, "u_42", NOW)


def reason(raw: Any) -> str:
    with pytest.raises(Rejected) as caught:
        normalize(raw, "u_42", NOW)
    return str(caught.value)


@pytest.mark.parametrize(
    ("type_", "value", "unit", "canonical", "expected"),
    [
        ("active_energy", 418.4, "kJ", "kcal", 100.0),
        ("active_energy", 250, "Cal", "kcal", 250.0),
        ("body_mass", 154.3234, "lb", "kg", 70.0),
        ("body_mass", 11, "st", "kg", 69.853),
        ("distance", 1, "mi", "m", 1609.344),
        ("distance", 2.5, "km", "m", 2500.0),
        ("distance", 1000, "ft", "m", 304.8),
        ("body_temperature", 98.6, "degF", "degC", 37.0),
        ("body_temperature", 310.15, "K", "degC", 37.0),
        ("blood_glucose", 5.5, "mmol/L", "mg/dL", 99.086),
        ("spo2", 0.97, "fraction", "%", 97.0),
        ("body_fat", 0.21, "fraction", "%", 21.0),
        ("hrv_sdnn", 0.045, "s", "ms", 45.0),
        ("heart_rate", 1.2, "Hz", "count/min", 72.0),
        ("heart_rate", 61, "bpm", "count/min", 61.0),
        ("blood_pressure_systolic", 16, "kPa", "mmHg", 120.01),
    ],
)
def test_usual_units_are_converted_to_the_canonical_one(
    type_: str, value: float, unit: str, canonical: str, expected: float
) -> None:
    stored = accepted(sample(type_, value, unit, end="2026-12-04T08:00:30Z"))
    assert stored.unit == canonical == TYPES[type_].unit
    assert stored.value == pytest.approx(expected, abs=0.001)


def test_sleep_takes_its_duration_or_a_value_in_minutes_or_hours() -> None:
    night = {"end": "2026-12-04T09:30:00Z", "metadata": {"stage": "deep"}}
    assert accepted(sample("sleep", None, None, **night)).value == 5400
    assert accepted(sample("sleep", 60, "min", **night)).value == 3600
    assert accepted(sample("sleep", 1.5, "h", **night)).value == 5400
    assert accepted(sample("sleep", None, None, **night)).stage == "deep"
    assert (
        reason(sample("sleep", 2, "h", **night)) == "sleep value 7200 s is longer than the sample"
    )
    assert reason(sample("sleep", None, None, end="2026-12-04T09:00:00Z")).startswith(
        "sleep needs metadata.stage"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (sample("steps", -5, "count"), "steps -5 count is negative"),
        (sample("heart_rate", 900, "bpm"), "heart_rate 900 count/min is outside 20-300"),
        (sample("heart_rate", 19, "count/min"), "heart_rate 19 count/min is outside 20-300"),
        (sample("spo2", 0.97, "%"), "spo2 0.97 % is outside 40-100"),
        (sample("steps", 10, "count", end="2026-12-04T07:00:00Z"), "end is before start"),
        (
            sample("steps", 10, "count", start="2026-12-05T13:00:00Z"),
            "the sample ends more than a day in the future",
        ),
        (
            sample("steps", 10, "count", end="2026-12-05T09:00:01Z"),
            "a steps sample lasts at most 25 h",
        ),
        (sample("hrv_rmssd", 40, "ms"), "HRV RMSSD cannot be converted to hrv_sdnn"),
        (sample("vo2max", 40, "ml/kg/min"), "unknown type 'vo2max' (see GET /v1/health/types)"),
        (sample("steps", 10, "m"), "unit 'm' is not a unit of steps (count)"),
        (sample("steps", 10, None), "unit is required (steps: count)"),
        (sample("steps", None, "count"), "value is required"),
        (
            sample("steps", 10, "count", start="2026-12-04T08:00:00"),
            "start: Input should have timezone info",
        ),
        (
            sample("steps", 10, "count", timezone="Mars/Olympus"),
            "timezone 'Mars/Olympus' is not an IANA time zone",
        ),
        (sample("steps", 10, "count", user_id="u_7"), "user_id 'u_7' is not the batch's 'u_42'"),
        ({"source": "watch", "type": "steps"}, "id: Field required"),
        ("not an object", "Input should be a valid dictionary or instance of SampleIn"),
        (sample("steps", float("inf"), "count"), "value: Input should be a finite number"),
    ],
)
def test_impossible_or_unknown_samples_are_rejected_with_a_reason(raw: Any, expected: str) -> None:
    assert reason(raw).startswith(expected)


def test_a_deletion_needs_only_its_identity_and_keeps_nothing_else() -> None:
    gone = accepted({"id": "s1", "source": "watch", "deleted": True, "value": 5, "device": "x"})
    assert gone.deleted and gone.value is None and gone.device is None and gone.type is None


def test_a_hash_tells_a_changed_sample_from_one_sent_again() -> None:
    first = accepted(sample("steps", 10, "count"))
    assert accepted(sample("steps", 10, "count")).hash == first.hash
    assert accepted(sample("steps", 11, "count")).hash != first.hash
    newer = accepted(sample("steps", 10, "count", modified_at="2026-12-04T09:00:00Z"))
    assert newer.hash != first.hash


def test_one_bad_sample_never_sinks_the_batch() -> None:
    good, bad = sample("steps", 10, "count"), sample("steps", -1, "count")
    kept, rejected = normalize_all([good, bad, good], "u_42", NOW)
    assert len(kept) == 2
    assert rejected == [(1, "steps -1 count is negative")]


def test_every_type_has_its_canonical_unit_among_its_units() -> None:
    for kind in TYPES.values():
        assert kind.units[kind.unit](7.0) == 7.0, kind.name
        assert (kind.kind is Kind.CATEGORY) == bool(kind.categories), kind.name


PLAIN_AND_NOT: list[dict[str, Any]] = [
    {
        "id": "a",
        "source": "w",
        "type": "steps",
        "value": 5,
        "unit": "count",
        "start": "2026-12-01T10:00:00Z",
        "end": "2026-12-01T10:01:00.5+01:00",
        "extra": 1,
    },
    {
        "id": "b",
        "source": "w",
        "type": "heart_rate",
        "value": 61.5,
        "unit": "bpm",
        "start": "2026-12-01T10:00:00+05:30",
        "tz_offset_minutes": 330,
        "device": "d",
        "recording_method": "automatic",
        "metadata": {"k": [1]},
        "modified_at": "2026-12-01T10:00:00Z",
    },
    {
        "id": "c",
        "source": "w",
        "type": "sleep",
        "start": "2026-12-01T01:00:00Z",
        "end": "2026-12-01T02:00:00Z",
        "metadata": {"stage": "deep"},
        "timezone": "Europe/Berlin",
    },
    {"id": "d", "source": "w", "deleted": True},
    {
        "id": "e",
        "source": "w",
        "type": "steps",
        "value": "5",
        "unit": "count",
        "start": "2026-12-01T10:00:00Z",
    },
    {
        "id": "f",
        "source": "w",
        "type": "steps",
        "value": True,
        "unit": "count",
        "start": "2026-12-01T10:00:00Z",
    },
    {
        "id": "g",
        "source": "w",
        "type": "steps",
        "value": 1,
        "unit": "count",
        "start": "2026-12-01T10:00:00",
    },
    {"id": "h", "source": "w", "type": "steps", "value": 1, "unit": "count", "start": 1764583200},
    {
        "id": "i",
        "source": "w",
        "type": "steps",
        "value": float("nan"),
        "unit": "count",
        "start": "2026-12-01T10:00:00Z",
    },
    {"id": "j", "source": "w", "tz_offset_minutes": 900, "type": "steps"},
    {
        "id": "k",
        "source": "w",
        "tz_offset_minutes": 60.0,
        "type": "steps",
        "value": 1,
        "unit": "count",
        "start": "2026-12-01T10:00:00Z",
    },
    {"id": "l", "source": "w", "recording_method": "guessed"},
    {"id": "m", "source": "", "type": "steps"},
    {"id": "n" * 201, "source": "w"},
    {"id": "o", "source": "w", "deleted": "yes"},
    {"id": "p", "source": "w", "metadata": ["stage"]},
    {"id": "q", "source": "w", "user_id": "someone", "type": "steps"},
    {
        "id": "r",
        "source": "w",
        "type": "steps",
        "value": 1,
        "unit": "count",
        "start": "2026-12-01T25:00:00Z",
    },
    {"id": "s", "source": "w", "unit": "x" * 21},
]


def _outcome(raw: Any) -> Any:
    try:
        return normalize(raw, "u_42", NOW)
    except Rejected as exc:
        return str(exc)


def test_plain_samples_are_taken_as_pydantic_takes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path (`_plain`) accepts, converts and rejects exactly as validating every
    sample with `SampleIn` does."""
    fast = [_outcome(raw) for raw in PLAIN_AND_NOT]
    assert [raw["id"] for raw in PLAIN_AND_NOT if normalize_module._plain(raw)] == list("abcdq")
    monkeypatch.setattr(normalize_module, "_plain", lambda raw: None)
    assert fast == [_outcome(raw) for raw in PLAIN_AND_NOT]
    assert sum(isinstance(outcome, Normalized) for outcome in fast) == 8  # lax: "5", True, 60.0
