"""Every health sample type Backsync stores (SPEC §6), in one table.

A row says what a type is measured in (its canonical unit), how its samples add up in a
day (`Kind`), which other units are converted and how, and what values and durations
are plausible. Adding a type is adding a row; nothing else in the code names types.

Why a table and not a unit library (pint and the like): the conversions that matter
here are not dimensional. mmol/L → mg/dL for glucose depends on glucose's molar mass
(another substance, another factor); SpO₂ "as a fraction" is a dimensionless 0-1 scale
turned into a percentage; `Cal` is a kilocalorie on a food label; and HRV RMSSD and
SDNN are both milliseconds, so a unit library would happily "convert" one into the
other, when they are different statistics of the same heartbeats. The table says each
of those things once, next to the type it is true of, and refuses what it does not list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Final


class Kind(StrEnum):
    """How a type's samples summarise over a day."""

    CUMULATIVE = "cumulative"
    """An amount over the sample's time (steps, metres): summed, split at midnight."""
    DISCRETE = "discrete"
    """A measurement of a state (heart rate, mass): min/avg/max/count."""
    CATEGORY = "category"
    """Time spent in a category (sleep stages): seconds per category."""


@dataclass(frozen=True, slots=True)
class Conversion:
    """`canonical = value * factor + offset`."""

    factor: float
    offset: float = 0.0

    def __call__(self, value: float) -> float:
        return value * self.factor + self.offset


SAME: Final = Conversion(1.0)
DAY: Final = timedelta(hours=25)
"""The longest cumulative sample: a calendar day, the 25-hour day of a DST change included
(wearable APIs send daily totals as one sample)."""


@dataclass(frozen=True, slots=True)
class SampleType:
    name: str
    unit: str
    """The canonical unit: values are stored and summarised in it."""
    kind: Kind
    units: Mapping[str, Conversion]
    """Every unit accepted, the canonical one included, with its conversion."""
    low: float | None = None
    """Smallest plausible value in the canonical unit (inclusive)."""
    high: float | None = None
    """Largest plausible value in the canonical unit (inclusive)."""
    max_duration: timedelta | None = None
    """Longest plausible sample (end - start); None: no limit."""
    categories: frozenset[str] = field(default_factory=frozenset)
    """For `Kind.CATEGORY`: the values `metadata.stage` may take."""


_COUNT_PER_MIN: Final = {
    "count/min": SAME,
    "bpm": SAME,
    "beats/min": SAME,
    "/min": SAME,
    "count/s": Conversion(60.0),
    "Hz": Conversion(60.0),
}
_PERCENT: Final = {"%": SAME, "fraction": Conversion(100.0)}
_SECONDS: Final = {"s": SAME, "min": Conversion(60.0), "h": Conversion(3600.0)}
_MMHG: Final = {"mmHg": SAME, "kPa": Conversion(7.500616827)}
SLEEP_STAGES: Final = frozenset({"awake", "light", "deep", "rem", "in_bed"})

TYPES: Final[Mapping[str, SampleType]] = {
    t.name: t
    for t in (
        SampleType("steps", "count", Kind.CUMULATIVE, {"count": SAME}, 0, None, DAY),
        SampleType(
            "distance",
            "m",
            Kind.CUMULATIVE,
            {
                "m": SAME,
                "km": Conversion(1000.0),
                "mi": Conversion(1609.344),
                "ft": Conversion(0.3048),
                "yd": Conversion(0.9144),
            },
            0,
            None,
            DAY,
        ),
        SampleType(
            "active_energy",
            "kcal",
            Kind.CUMULATIVE,
            {"kcal": SAME, "Cal": SAME, "kJ": Conversion(1 / 4.184), "cal": Conversion(0.001)},
            0,
            None,
            DAY,
        ),
        SampleType("heart_rate", "count/min", Kind.DISCRETE, _COUNT_PER_MIN, 20, 300),
        SampleType("resting_heart_rate", "count/min", Kind.DISCRETE, _COUNT_PER_MIN, 20, 300),
        SampleType("hrv_sdnn", "ms", Kind.DISCRETE, {"ms": SAME, "s": Conversion(1000.0)}, 0, 1000),
        SampleType("spo2", "%", Kind.DISCRETE, _PERCENT, 40, 100),
        SampleType("respiratory_rate", "count/min", Kind.DISCRETE, {**_COUNT_PER_MIN}, 2, 100),
        SampleType(
            "body_mass",
            "kg",
            Kind.DISCRETE,
            {
                "kg": SAME,
                "g": Conversion(0.001),
                "lb": Conversion(0.45359237),
                "st": Conversion(6.35029318),
            },
            0.2,
            650,
        ),
        SampleType("body_fat", "%", Kind.DISCRETE, _PERCENT, 1, 80),
        SampleType(
            "body_temperature",
            "degC",
            Kind.DISCRETE,
            {
                "degC": SAME,
                "°C": SAME,
                "degF": Conversion(5 / 9, -32 * 5 / 9),
                "°F": Conversion(5 / 9, -32 * 5 / 9),
                "K": Conversion(1.0, -273.15),
            },
            25,
            45,
        ),
        SampleType(
            "sleep", "s", Kind.CATEGORY, _SECONDS, 0, None, timedelta(hours=24), SLEEP_STAGES
        ),
        SampleType(
            "blood_glucose",
            "mg/dL",
            Kind.DISCRETE,
            # Glucose's molar mass, 180.156 g/mol: 1 mmol/L = 18.0156 mg/dL (glucose only).
            {"mg/dL": SAME, "mmol/L": Conversion(18.0156)},
            10,
            1500,
        ),
        SampleType("blood_pressure_systolic", "mmHg", Kind.DISCRETE, _MMHG, 40, 300),
        SampleType("blood_pressure_diastolic", "mmHg", Kind.DISCRETE, _MMHG, 20, 200),
    )
}

NOT_CONVERTIBLE: Final[Mapping[str, str]] = {
    "hrv_rmssd": "HRV RMSSD cannot be converted to hrv_sdnn (a different statistic of the"
    " same heartbeats); it is not stored",
    "hrv_pnn50": "HRV pNN50 cannot be converted to hrv_sdnn; it is not stored",
}
"""Types a client may reasonably send that look like one of ours and are not: refused
with the reason, never guessed into the nearest type."""
