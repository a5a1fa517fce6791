"""A task's `health_mapping`: how a wearable API's records become health samples.

A mapping names, for one sample type, where a record keeps the sample's value, times, id
and time zone (dotted paths, the engine's syntax: `summary.steps`, `items.0.bpm`) and
what is constant (the unit, the source, a duration). Its list forms let one record
yield several samples: `samples` (one entry per type, each inheriting the top-level
fields it does not set: a daily-activity record gives steps, energy and distance) and
`items_path` (a list inside the record, one sample per item: an intraday heart-rate
series). A mapped sample is then checked and converted exactly as a phone's
(`normalize`), and stored through the same upsert (`store`): one set of rules for both.

Sample ids are derived, so that a record synced again maps onto the same samples:
`{id}:{type}`, and with `items_path` `{id}:{type}:{start}` (the item's start in UTC) —
a series that grows adds samples, a changed point updates its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.health.normalize import Normalized, Rejected, normalize
from service.health.types import NOT_CONVERTIBLE, TYPES, Kind
from service.sync import MISSING, get_path

Path = Annotated[str, Field(min_length=1, max_length=200, examples=["data.steps"])]

MAX_ENTRIES = 20
MAX_ITEMS = 5000
"""Samples one record may yield through `items_path` (a day of minutes is 1,440)."""

MAPPING_EXAMPLE: dict[str, Any] = {
    "id_path": "id",
    "start_path": "day",
    "duration_seconds": 86400,
    "timezone_path": "timezone",
    "source": "oura",
    "samples": [
        {"type": "steps", "value_path": "steps", "unit": "count"},
        {"type": "active_energy", "value_path": "active_calories", "unit": "kcal"},
        {"type": "distance", "value_path": "distance_km", "unit": "km"},
    ],
}


class SampleMapping(BaseModel):
    """Where one type's samples are in a record. Every path is dotted (`a.b.0.c`)."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, max_length=60, examples=["steps"])
    value_path: Path | None = Field(
        default=None, description="The value; optional for `sleep` (its duration then)."
    )
    unit: str | None = Field(
        default=None,
        max_length=20,
        description="The unit the upstream sends (converted to the type's canonical unit).",
        examples=["kJ"],
    )
    start_path: Path | None = Field(
        default=None,
        description="An ISO 8601 date-time, a date (its local midnight), or Unix seconds."
        " A date-time without offset, or a date, is read in the record's time zone.",
    )
    end_path: Path | None = Field(
        default=None,
        description="Or `duration_seconds`; neither: the sample is an instant (end = start).",
    )
    duration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=90_000,
        description="The sample lasts this long from its start, in local wall-clock time"
        " (86400 from a date is that local day, 23 or 25 hours across a DST change).",
    )
    id_path: Path | None = Field(
        default=None, description="The record's (or the item's) id: the sample ids' stem."
    )
    timezone_path: Path | None = Field(
        default=None,
        description='An IANA zone ("Europe/Berlin"), an offset ("+02:00") or offset'
        " minutes. Without it (and `timezone`): the start's own offset, else UTC.",
    )
    timezone: str | None = Field(
        default=None, max_length=64, description="A constant IANA zone, instead of a path."
    )
    stage_path: Path | None = Field(
        default=None, description="`sleep` only: the stage (awake, light, deep, rem, in_bed)."
    )
    items_path: Path | None = Field(
        default=None,
        description="A list in the record, one sample per item (a heart-rate series). Paths"
        " are read from the item, and from the record where the item lacks them.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="Kept on every sample as given."
    )


class HealthMapping(SampleMapping):
    """One sample type per record, or several: `samples` lists one entry per type, each
    inheriting the fields it does not set from this object."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [MAPPING_EXAMPLE]})

    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The samples' `source` (source priority). Default: the task's id.",
    )
    samples: list[SampleMapping] | None = Field(default=None, min_length=1, max_length=MAX_ENTRIES)


@dataclass(frozen=True, slots=True)
class Entry:
    """One effective mapping (a `samples` entry over the top level), and where each of
    its fields was given (for error locations)."""

    fields: dict[str, Any]
    where: dict[str, list[str | int]]

    def __getitem__(self, name: str) -> Any:
        return self.fields.get(name)


def entries(mapping: HealthMapping) -> list[Entry]:
    top = mapping.model_dump(exclude_none=True, exclude={"samples", "source"})
    if not mapping.samples:
        return [Entry(top, {name: [name] for name in top})]
    result = []
    for index, sample in enumerate(mapping.samples):
        own = sample.model_dump(exclude_none=True)
        where: dict[str, list[str | int]] = {name: [name] for name in top}
        where |= {name: ["samples", index, name] for name in own}
        result.append(Entry(top | own, where))
    return result


def problems(mapping: HealthMapping) -> Iterator[tuple[list[str | int], str]]:
    """What makes a mapping unusable, as (location in the mapping, message): checked at
    registration, so a run never meets a mapping it cannot apply."""
    seen: set[str] = set()
    for number, entry in enumerate(entries(mapping)):
        here: list[str | int] = ["samples", number] if mapping.samples else []

        def at(name: str, entry: Entry = entry, here: list[str | int] = here) -> list[str | int]:
            return entry.where.get(name, [*here, name])

        kind = entry["type"]
        if kind is None:
            yield at("type"), "type is required"
            continue
        if kind in NOT_CONVERTIBLE:
            yield at("type"), NOT_CONVERTIBLE[kind]
            continue
        spec = TYPES.get(kind)
        if spec is None:
            yield at("type"), f"unknown type {kind!r} (see GET /v1/health/types)"
            continue
        if kind in seen:
            yield at("type"), f"{kind} is mapped twice: their sample ids would collide"
        seen.add(kind)
        sleep = spec.kind is Kind.CATEGORY
        for name in ("start_path", "id_path", *(() if sleep else ("value_path",))):
            if entry[name] is None:
                yield at(name), f"{name} is required"
        if entry["value_path"] is not None and entry["unit"] is None:
            yield at("unit"), f"unit is required ({kind}: {', '.join(spec.units)})"
        if entry["unit"] is not None and entry["unit"] not in spec.units:
            units = ", ".join(spec.units)
            yield at("unit"), f"unit {entry['unit']!r} cannot be converted to {spec.unit} ({units})"
        if entry["end_path"] is not None and entry["duration_seconds"] is not None:
            yield at("duration_seconds"), "give end_path or duration_seconds, not both"
        if entry["timezone_path"] is not None and entry["timezone"] is not None:
            yield at("timezone"), "give timezone_path or timezone, not both"
        if entry["timezone"] is not None and _zone(entry["timezone"]) is None:
            yield at("timezone"), f"unknown timezone {entry['timezone']!r}"
        if sleep and entry["stage_path"] is None:
            yield at("stage_path"), f"{kind} needs stage_path (the sleep stage)"
        if not sleep and entry["stage_path"] is not None:
            yield at("stage_path"), f"stage_path applies to sleep only, not {kind}"


# ---- applying a mapping to a record --------------------------------------------------


def samples_of(
    record: Any, mapping: HealthMapping, source: str, user_id: str, now: datetime
) -> tuple[list[Normalized], list[str]]:
    """A record's samples, normalised, and the reasons of those rejected (a record that
    is not an object, a path it lacks, a value no sample may have)."""
    accepted: list[Normalized] = []
    rejected: list[str] = []
    source = mapping.source or source
    for entry in entries(mapping):
        for item in _items(record, entry, rejected):
            try:
                raw = _sample(item, record, entry, source)
                accepted.append(normalize(raw, user_id, now))
            except Rejected as exc:
                rejected.append(f"{entry['type']}: {exc}")
    return accepted, rejected


def _items(record: Any, entry: Entry, rejected: list[str]) -> list[Any]:
    if entry["items_path"] is None:
        return [record]
    items = get_path(record, entry["items_path"])
    if items is MISSING or items is None:
        return []  # no series in this record (yet): nothing to map, nothing wrong
    if not isinstance(items, list):
        rejected.append(f"{entry['type']}: items_path {entry['items_path']!r} is not a list")
        return []
    if len(items) > MAX_ITEMS:
        rejected.append(f"{entry['type']}: more than {MAX_ITEMS} items; the rest are not mapped")
    return items[:MAX_ITEMS]


def _sample(item: Any, record: Any, entry: Entry, source: str) -> dict[str, Any]:
    def read(name: str, required: bool = False) -> Any:
        path = entry[name]
        if path is None:
            return None
        value = get_path(item, path)
        if value is MISSING and item is not record:
            value = get_path(record, path)
        if value is MISSING:
            if required:
                raise Rejected(f"the record has no {path!r} ({name})")
            return None
        return value

    zone = _zone_at(read("timezone_path"), entry["timezone"])
    start = _moment(read("start_path", True), zone, "start_path")
    end = start if entry["end_path"] is None else _moment(read("end_path", True), zone, "end_path")
    if entry["duration_seconds"] is not None:
        end = start + timedelta(seconds=entry["duration_seconds"])  # wall clock, in its zone
    ident = read("id_path", True)
    if not isinstance(ident, str | int) or isinstance(ident, bool) or ident == "":
        raise Rejected(f"id_path {entry['id_path']!r} is not a string or an integer")
    sample_id = f"{ident}:{entry['type']}"
    if entry["items_path"] is not None:
        sample_id += f":{start.astimezone(UTC).isoformat().replace('+00:00', 'Z')}"
    metadata = dict(entry["metadata"] or {})
    if entry["stage_path"] is not None:
        metadata["stage"] = read("stage_path", True)
    sample: dict[str, Any] = {
        "id": sample_id,
        "source": source,
        "type": entry["type"],
        "value": read("value_path", True),
        "unit": entry["unit"],
        "start": start,
        "end": end,
        "metadata": metadata or None,
    }
    if isinstance(zone, ZoneInfo):
        sample["timezone"] = zone.key
    else:
        offset = start.utcoffset()
        sample["tz_offset_minutes"] = int(offset.total_seconds() // 60) if offset else 0
    return sample


_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _zone_at(value: Any, constant: str | None) -> tzinfo | None:
    """The record's zone: a constant IANA name, or the value found at `timezone_path`."""
    if constant is not None:
        return _zone(constant)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and -720 <= value <= 840:
        return timezone(timedelta(minutes=value))
    if isinstance(value, str):
        if value in ("Z", "UTC"):
            return UTC
        match = _OFFSET.fullmatch(value)
        if match:
            sign, hours, minutes = match.groups()
            delta = timedelta(hours=int(hours), minutes=int(minutes))
            if delta <= timedelta(hours=14):
                return timezone(-delta if sign == "-" else delta)
        zone = _zone(value)
        if zone is not None:
            return zone
    raise Rejected(f"time zone {str(value)[:64]!r} is not an IANA zone or a UTC offset")


def _moment(value: Any, zone: tzinfo | None, name: str) -> datetime:
    """An aware datetime: in `zone` when one is known (so that adding a duration counts
    local wall-clock time), else as given, else UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise Rejected(f"{name}: {value!r} is not a time") from None
        return moment.astimezone(zone) if zone else moment
    if not isinstance(value, str):
        raise Rejected(f"{name}: {str(value)[:40]!r} is not a time")
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime(day.year, day.month, day.day)
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        raise Rejected(f"{name}: {value[:40]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=zone or UTC)
    return moment.astimezone(zone) if zone else moment


def usable(raw: Any, user_id: str | None) -> HealthMapping:
    """A stored task's mapping, parsed for a run; ValueError saying why it cannot be
    applied (a task stored before mappings were checked, or one without a user)."""
    try:
        mapping = HealthMapping.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        path = ".".join(str(part) for part in first["loc"])
        raise ValueError(
            f"the task's health_mapping.{path}: {first['msg']}; fix it with PATCH"
        ) from None
    for where, message in problems(mapping):
        path = ".".join(str(part) for part in where)
        raise ValueError(f"the task's health_mapping.{path}: {message}; fix it with PATCH")
    if user_id is None:
        raise ValueError("a task with a health_mapping needs a user_id (the samples' user)")
    return mapping
