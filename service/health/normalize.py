"""From a sample as sent to a sample as stored: checked, converted, or rejected with a
reason.

Everything the API decides about one sample is here, as plain functions of the sample
and the time it arrived, so the rules are unit-tested without a database. The result
(`Normalized`) is what a batch keeps for the worker: JSON-ready, in canonical units,
with the content hash that tells a re-sent sample from a changed one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import ValidationError

from service.health.schemas import SampleIn
from service.health.types import NOT_CONVERTIBLE, TYPES, Kind, SampleType

FUTURE_SLACK = timedelta(days=1)
"""A sample may end at most this far after it arrives (clocks are wrong; days are not)."""


DECIMALS = 6
"""Converted values are rounded to this many decimals: 418.4 kJ is 100 kcal, not
99.99999999999999 (no health measure carries more precision)."""


class Rejected(Exception):
    """Why a sample is not stored; the message is the reason the client sees."""


@dataclass(slots=True)
class Normalized:
    """A sample ready to store: canonical value and unit, UTC times as ISO strings.

    Not frozen, though nothing changes one after it is made (`dataclasses.replace`
    makes another): a frozen dataclass's `__init__` sets each field through
    `object.__setattr__`, and building a batch's 10,000 took 17 ms frozen, 2.5 ms not,
    in the API's 202 and again in the worker."""

    id: str
    source: str
    type: str | None
    value: float | None
    unit: str | None
    start: str | None
    end: str | None
    tz_offset_minutes: int | None
    timezone: str | None
    device: str | None
    recording_method: str | None
    metadata: dict[str, Any] | None
    stage: str | None
    modified_at: str | None
    deleted: bool
    hash: str

    def to_json(self) -> list[Any]:
        """A list in field order: a batch keeps 10,000 of them, and `asdict` (which
        deep-copies) took longer than checking the samples."""
        return [getattr(self, name) for name in self.__slots__]

    @classmethod
    def from_json(cls, data: list[Any]) -> Normalized:
        return cls(*data)


def normalize_all(
    raw: list[dict[str, Any]], user_id: str, now: datetime
) -> tuple[list[Normalized], list[tuple[int, str]]]:
    """The accepted samples, and (index, reason) for each rejected one."""
    accepted: list[Normalized] = []
    rejected: list[tuple[int, str]] = []
    for index, item in enumerate(raw):
        try:
            accepted.append(normalize(item, user_id, now))
        except Rejected as exc:
            rejected.append((index, str(exc)))
    return accepted, rejected


def normalize(raw: Any, user_id: str, now: datetime) -> Normalized:
    """One sample checked and converted; raises `Rejected` with the reason."""
    sample = _parse(raw)
    if sample.user_id is not None and sample.user_id != user_id:
        raise Rejected(f"user_id {sample.user_id!r} is not the batch's {user_id!r}")
    if sample.deleted:
        return _tombstone(sample)
    kind = _type_of(sample.type)
    start, end = _times(sample, kind, now)
    value = _value(sample, kind, (end - start).total_seconds())
    stage = _stage(sample, kind)
    return _finish(
        sample,
        type=kind.name,
        value=value,
        unit=kind.unit,
        start=start.isoformat(),
        end=end.isoformat(),
        timezone=_zone_name(sample.timezone),
        stage=stage,
    )


Sample = SampleIn | SimpleNamespace
"""A sample's fields as `SampleIn` has them: the model pydantic validated, or, for a
plain sample, the same attributes without it (`_plain`)."""


def _parse(raw: Any) -> Sample:
    """The sample's fields: plain samples through `_plain`, the rest (and anything
    `_plain` is unsure of) through pydantic, whose messages are the rejection reasons."""
    if type(raw) is dict:
        plain = _plain(raw)
        if plain is not None:
            return plain
    try:
        return SampleIn.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise Rejected(f"{where}: {first['msg']}" if where else first["msg"]) from None


_DEFAULTS = {
    name: info.default for name, info in SampleIn.model_fields.items() if not info.is_required()
}
_AWARE_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})\Z")
_LONGEST = {"type": 60, "unit": 20, "timezone": 64, "device": 200}
_METHODS = frozenset({"automatic", "active", "manual"})
_TIMES = ("start", "end", "modified_at")


def _plain(raw: dict[str, Any]) -> SimpleNamespace | None:
    """A sample pydantic would take as it is, built without it; None when it is not
    plainly so (then pydantic decides, and words the reason).

    Why: validating 10,000 samples one by one with `SampleIn` was the largest part of a
    batch's time to its 202 (bench/health.py), and so was building the model without
    validating (`model_construct`: 5 µs a sample, where a namespace of the same
    attributes, the model's defaults under the sample's fields, takes 0.35 µs). Only
    exact types are taken here (a str, an int or a float, a bool, ISO 8601 times with an
    offset) and every bound of `SampleIn` is checked; anything else (a number as a
    string, a time as a number, a value out of bounds) goes to pydantic, so what is
    accepted and every rejection reason are pydantic's."""
    fields = dict(raw)
    id_, source, user_id = fields.get("id"), fields.get("source"), fields.get("user_id")
    if not (type(id_) is str and 0 < len(id_) <= 200):
        return None
    if not (type(source) is str and 0 < len(source) <= 100):
        return None
    if user_id is not None and not (type(user_id) is str and 0 < len(user_id) <= 200):
        return None
    for name, longest in _LONGEST.items():
        text = fields.get(name)
        if text is not None and not (type(text) is str and len(text) <= longest):
            return None
    value = fields.get("value")
    if value is not None:
        if type(value) not in (int, float) or not -1e300 < value < 1e300:
            return None
        fields["value"] = float(value)
    for name in _TIMES:
        moment = fields.get(name)
        if moment is not None:
            if type(moment) is not str or _AWARE_ISO.match(moment) is None:
                return None
            try:
                fields[name] = datetime.fromisoformat(moment)
            except ValueError:
                return None
    offset = fields.get("tz_offset_minutes")
    if offset is not None and not (type(offset) is int and -720 <= offset <= 840):
        return None
    method = fields.get("recording_method")
    if method is not None and method not in _METHODS:
        return None
    metadata = fields.get("metadata")
    if metadata is not None and not (
        type(metadata) is dict and all(type(key) is str for key in metadata)
    ):
        return None
    if type(fields.setdefault("deleted", False)) is not bool:
        return None
    return SimpleNamespace(**(_DEFAULTS | fields))


def _type_of(name: str | None) -> SampleType:
    if name is None:
        raise Rejected("type is required")
    if name in NOT_CONVERTIBLE:
        raise Rejected(NOT_CONVERTIBLE[name])
    kind = TYPES.get(name)
    if kind is None:
        raise Rejected(f"unknown type {name!r} (see GET /v1/health/types)")
    return kind


def _times(sample: Sample, kind: SampleType, now: datetime) -> tuple[datetime, datetime]:
    if sample.start is None:
        raise Rejected("start is required")
    start = sample.start.astimezone(UTC)
    end = sample.end.astimezone(UTC) if sample.end is not None else start
    if end < start:
        raise Rejected("end is before start")
    if end > now + FUTURE_SLACK:
        raise Rejected("the sample ends more than a day in the future")
    if kind.max_duration is not None and end - start > kind.max_duration:
        hours = kind.max_duration.total_seconds() / 3600
        raise Rejected(f"a {kind.name} sample lasts at most {hours:g} h")
    return start, end


def _value(sample: Sample, kind: SampleType, seconds: float) -> float:
    if sample.value is None:
        if kind.kind is Kind.CATEGORY:
            return seconds
        raise Rejected("value is required")
    if sample.unit is None:
        raise Rejected(f"unit is required ({kind.name}: {', '.join(kind.units)})")
    conversion = kind.units.get(sample.unit)
    if conversion is None:
        raise Rejected(
            f"unit {sample.unit!r} is not a unit of {kind.name} ({', '.join(kind.units)})"
        )
    value = round(conversion(sample.value), DECIMALS)
    if kind.kind is Kind.CATEGORY and value > seconds + 1:
        raise Rejected(f"{kind.name} value {value:g} s is longer than the sample")
    _plausible(kind, value)
    return value


def _plausible(kind: SampleType, value: float) -> None:
    low, high = kind.low, kind.high
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is None:
            raise Rejected(f"{kind.name} {value:g} {kind.unit} is negative")
        span = f"{low:g}-{high:g}" if low is not None and high is not None else f"≤ {high:g}"
        raise Rejected(f"{kind.name} {value:g} {kind.unit} is outside {span}")


def _stage(sample: Sample, kind: SampleType) -> str | None:
    if kind.kind is not Kind.CATEGORY:
        return None
    stage = (sample.metadata or {}).get("stage")
    if stage not in kind.categories:
        raise Rejected(
            f"{kind.name} needs metadata.stage, one of {', '.join(sorted(kind.categories))}"
        )
    return str(stage)


def _zone_name(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Rejected(f"timezone {name!r} is not an IANA time zone") from None
    return name


def _tombstone(sample: Sample) -> Normalized:
    """A deletion: only the identity is kept (a deleted health sample's data goes)."""
    if sample.type is not None and sample.type not in TYPES:
        raise Rejected(f"unknown type {sample.type!r} (see GET /v1/health/types)")
    return _finish(sample, type=sample.type, deleted=True)


def _finish(sample: Sample, **fields: Any) -> Normalized:
    values: dict[str, Any] = {
        "id": sample.id,
        "source": sample.source,
        "type": None,
        "value": None,
        "unit": None,
        "start": None,
        "end": None,
        "tz_offset_minutes": None,
        "timezone": None,
        "device": None,
        "recording_method": None,
        "metadata": None,
        "stage": None,
        "modified_at": _iso(sample.modified_at),
        "deleted": False,
    }
    if not fields.get("deleted"):
        values |= {
            "tz_offset_minutes": sample.tz_offset_minutes,
            "device": sample.device,
            "recording_method": sample.recording_method,
            "metadata": sample.metadata,
        }
    values |= fields
    values["hash"] = content_hash(values)
    return Normalized(**values)


def content_hash(values: dict[str, Any]) -> str:
    """What tells a changed sample from one sent again (`modified_at` included)."""
    return hashlib.md5(orjson.dumps(values, option=orjson.OPT_SORT_KEYS)).hexdigest()  # noqa: S324


def moment(iso: str | None) -> datetime | None:
    """A normalised sample's ISO time back as an aware datetime (None stays None)."""
    return None if iso is None else datetime.fromisoformat(iso)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()
