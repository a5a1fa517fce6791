from __future__ import annotations

import pytest

from service.sync.incremental import later, page_watermark, start_params, with_lag
from service.sync.spec import Incremental


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("2026-01-01T23:30:00Z", "2026-01-02T00:00:00+01:00", "2026-01-01T23:30:00Z"),
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:01Z"),
        ("2026-01-02", "2026-01-10", "2026-01-10"),
        (9, 10, 10),
        (1.5, 1.25, 1.5),
        ("b", "a", "b"),
        (None, "x", "x"),
        ("x", None, "x"),
    ],
)
def test_later_compares_each_kind_in_its_own_terms(a: object, b: object, expected: object) -> None:
    assert later(a, b) == expected  # type: ignore[arg-type]


def test_page_watermark_skips_records_without_the_cursor() -> None:
    records = [{"ts": 5}, {"ts": None}, {}, {"ts": 12}, {"ts": 7}, "odd", {"ts": True}]
    assert page_watermark(records, "ts") == 12
    assert page_watermark([{}], "ts") is None


def test_lag_moves_back_in_the_values_own_format() -> None:
    assert with_lag("2026-01-01T00:00:10Z", 10) == "2026-01-01T00:00:00Z"
    assert with_lag("2026-01-01T01:00:00+01:00", 3600) == "2026-01-01T00:00:00+01:00"
    assert with_lag(1_700_000_060, 60) == 1_700_000_000
    assert with_lag(1_700_000_060_000, 60) == 1_700_000_000_000  # epoch milliseconds
    assert with_lag("opaque-cursor-17", 60) == "opaque-cursor-17"
    assert with_lag("2026-01-01T00:00:10Z", 0) == "2026-01-01T00:00:10Z"


def test_start_params_for_each_kind_of_run() -> None:
    inc = Incremental(
        cursor_path="ts",
        param="since",
        initial_value="2026-01-01T00:00:00Z",
        lag_seconds=60,
        end_param="until",
    )
    assert start_params(inc, None) == {"since": "2026-01-01T00:00:00Z"}
    assert start_params(inc, "2026-03-01T00:01:00Z") == {"since": "2026-03-01T00:00:00Z"}
    assert start_params(inc, "2026-03-01T00:01:00Z", full_refresh=True) == {
        "since": "2026-01-01T00:00:00Z"
    }
    assert start_params(inc, "x", backfill=("2026-01-01", "2026-02-01")) == {
        "since": "2026-01-01",
        "until": "2026-02-01",
    }
    no_initial = Incremental(cursor_path="ts", param="since")
    assert start_params(no_initial, None) == {}
