"""Incremental sync: the watermark is the largest `cursor_path` value seen.

Upstreams use ISO timestamps, epoch numbers or opaque strings as cursors; each compares
in its own terms (`"2026-01-02T00:00:00+01:00"` is *before* `"2026-01-01T23:30:00Z"`,
`9` before `10`), and the lag is subtracted in the same terms.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from service.sync.paths import MISSING, get_path
from service.sync.spec import Incremental

Watermark = str | int | float

_EPOCH_MS_THRESHOLD = 100_000_000_000  # larger epoch values are milliseconds


def _as_datetime(value: str) -> datetime | None:
    if len(value) < 10 or not value[:4].isdigit() or value[4] != "-":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed


def _sort_key(value: Watermark) -> tuple[int, Any]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    moment = _as_datetime(value) if isinstance(value, str) else None
    if moment is not None:
        return (1, moment.timestamp() if moment.tzinfo else moment.isoformat())
    return (2, str(value))


def later(a: Watermark | None, b: Watermark | None) -> Watermark | None:
    """The larger of two watermarks (None is "nothing seen yet")."""
    if a is None:
        return b
    if b is None:
        return a
    try:
        return b if _sort_key(b) > _sort_key(a) else a
    except TypeError:  # e.g. aware vs naive timestamps: fall back to text order
        return b if str(b) > str(a) else a


def page_watermark(records: list[Any], cursor_path: str) -> Watermark | None:
    best: Watermark | None = None
    for record in records:
        value = get_path(record, cursor_path)
        if value is MISSING or value is None or isinstance(value, bool | dict | list):
            continue
        best = later(best, value)
    return best


def with_lag(value: Watermark, lag_seconds: int) -> Watermark:
    """`value` moved back by the lag, in its own format; opaque strings are left alone."""
    if lag_seconds <= 0:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        step = lag_seconds * 1000 if value >= _EPOCH_MS_THRESHOLD else lag_seconds
        return type(value)(value - step)
    if not isinstance(value, str) or (moment := _as_datetime(value)) is None:
        return value
    shifted = moment - timedelta(seconds=lag_seconds)
    text = shifted.isoformat()
    return text.replace("+00:00", "Z") if value.endswith(("Z", "z")) else text


def start_params(
    incremental: Incremental,
    watermark: Watermark | None,
    *,
    full_refresh: bool = False,
    backfill: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Query parameters that bound this run: from the watermark (less the lag), the
    initial value on a full refresh, or an explicit backfill window."""
    if backfill is not None:
        params: dict[str, Any] = {incremental.param: backfill[0]}
        if incremental.end_param:
            params[incremental.end_param] = backfill[1]
        return params
    value = (
        incremental.initial_value
        if full_refresh or watermark is None
        else with_lag(watermark, incremental.lag_seconds)
    )
    return {} if value is None else {incremental.param: value}
