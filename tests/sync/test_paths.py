"""`get_path`: dotted paths into decoded JSON, with MISSING (not None) for "not there"."""

from __future__ import annotations

from typing import Any

import pytest

from service.sync.paths import MISSING, get_path

DOC: dict[str, Any] = {
    "data": {"items": [{"id": 1}, {"id": 2}, {"id": 3}], "empty": [], "none": None},
    "meta": [{"next": "abc"}],
    "0": "a key that looks like an index",
    "flag": False,
    "zero": 0,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("data.items.0.id", 1),
        ("data.items.2.id", 3),
        ("data.items.-1.id", 3),
        ("data.items.-3.id", 1),
        ("meta.0.next", "abc"),
        ("data.empty", []),
        ("0", "a key that looks like an index"),
        ("flag", False),
        ("zero", 0),
    ],
)
def test_found(path: str, expected: Any) -> None:
    assert get_path(DOC, path) == expected


def test_empty_path_is_the_document_itself() -> None:
    assert get_path(DOC, "") is DOC
    assert get_path([1, 2], "") == [1, 2]
    assert get_path(None, "") is None


def test_null_is_a_value_not_missing() -> None:
    assert get_path(DOC, "data.none") is None


@pytest.mark.parametrize(
    "path",
    [
        "nope",
        "data.nope",
        "data.items.3",  # past the end
        "data.items.-4",  # before the start
        "data.items.id",  # a name into a list
        "data.items.0.id.deeper",  # into a scalar
        "data.none.id",  # into null
        "data.empty.0",
        "data.items.--1",  # not an index, though it strips to digits
        "data.items.+1",
        "data.items.1.5",
        "data.items.²",  # a Unicode digit that int() refuses
        "data.items. 1",
    ],
)
def test_missing(path: str) -> None:
    assert get_path(DOC, path) is MISSING


def test_a_list_at_the_top() -> None:
    assert get_path([{"a": {"b": 7}}], "0.a.b") == 7
    assert get_path([], "0") is MISSING


def test_scalar_documents_have_no_paths() -> None:
    assert get_path("text", "0") is MISSING
    assert get_path(5, "a") is MISSING
