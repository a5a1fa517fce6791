"""From page to rows: records_path, primary keys (simple and compound), rejections, and
the canonical hash that decides "unchanged"."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from starlette.responses import JSONResponse

from service.runs.ledger.postgres import packed
from service.sync.client import UpstreamClient
from service.sync.errors import BadConfig
from service.sync.extract import extract
from tests.fixtures.upstream import Upstream, make_records
from tests.sync.helpers import collect, rows, source


async def test_nested_records_path(upstream: Upstream, http: UpstreamClient) -> None:
    data = make_records(3)
    url = upstream.route("/nested", lambda _: JSONResponse({"data": {"items": data, "count": 3}}))

    pages = await collect(http, source(url, records_path="data.items"))

    assert rows(pages) == data
    assert [row.key for row in pages[0].records.rows] == ['"r000000"', '"r000001"', '"r000002"']


async def test_empty_records_path_means_the_body_is_the_list(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = make_records(2)
    url = upstream.route("/list", lambda _: JSONResponse(data))

    pages = await collect(http, source(url, records_path=""))

    assert rows(pages) == data


@pytest.mark.parametrize(
    ("records_path", "body"),
    [
        ("data", {"data": {"id": 1}}),
        ("data", {"data": "not records"}),
        ("data.items", {"data": {"items": 5}}),
        ("", {"data": []}),
    ],
)
async def test_records_path_on_a_non_list_is_bad_config(
    upstream: Upstream, http: UpstreamClient, records_path: str, body: Any
) -> None:
    url = upstream.route("/odd", lambda _: JSONResponse(body))

    with pytest.raises(BadConfig, match="not a list") as caught:
        await collect(http, source(url, records_path=records_path))

    assert caught.value.retryable is False
    assert caught.value.code == "bad_config"


@pytest.mark.parametrize(
    ("records_path", "body", "message"),
    [
        (
            "dat",
            {"data": [{"id": 1}], "meta": {}},
            "'dat' is not in the response (its top-level keys: data, meta)",
        ),
        ("data.itemz", {"data": {"items": []}}, "'data' has no 'itemz' (its keys: items)"),
        ("data.items", {"data": None}, "'data' is null"),
        ("data", [{"id": 1}], "the response is a list"),
        ("", {"data": [], "next": None}, "the response is an object (keys: data, next)"),
    ],
)
async def test_a_first_page_without_the_records_path_is_bad_config_naming_what_is_there(
    upstream: Upstream, http: UpstreamClient, records_path: str, body: Any, message: str
) -> None:
    """A typo must not pass as a sync of 0 records: the message shows the keys to pick from."""
    url = upstream.route("/typo", lambda _: JSONResponse(body))

    with pytest.raises(BadConfig) as caught:
        await collect(http, source(url, records_path=records_path))

    assert message in caught.value.message
    assert caught.value.code == "bad_config"
    assert caught.value.retryable is False


@pytest.mark.parametrize("body", [{"data": []}, {"data": None}])
async def test_an_empty_or_null_list_is_an_empty_page(
    upstream: Upstream, http: UpstreamClient, body: Any
) -> None:
    """`null` counts as empty: serialisers write empty lists that way (Go's nil slices)."""
    url = upstream.route("/empty", lambda _: JSONResponse(body))

    pages = await collect(http, source(url, records_path="data"))

    assert len(pages) == 1
    assert pages[0].records.seen == 0


async def test_a_later_page_without_the_list_ends_as_an_empty_page(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """The first page proved the path; some upstreams drop the list past the end."""
    pages_by_number = {"1": {"data": [{"id": 1}, {"id": 2}]}, "2": {"total": 2}}
    url = upstream.route("/paged", lambda r: JSONResponse(pages_by_number[r.query_params["page"]]))
    pagination = {"type": "page_number", "page_param": "page"}

    pages = await collect(http, source(url, records_path="data", pagination=pagination))

    assert rows(pages) == [{"id": 1}, {"id": 2}]
    assert [page.records.seen for page in pages] == [2, 0]


async def test_compound_primary_key_is_a_json_list(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = [
        {"user": {"id": "u1"}, "day": "2026-01-01", "steps": 10},
        {"user": {"id": "u1"}, "day": "2026-01-02", "steps": 20},
        {"user": {"id": 7}, "day": "2026-01-01", "steps": 30},
    ]
    url = upstream.route("/daily", lambda _: JSONResponse({"data": data}))

    pages = await collect(http, source(url, records_path="data", primary_key=["user.id", "day"]))

    keys = [row.key for row in pages[0].records.rows]
    assert keys == ['["u1","2026-01-01"]', '["u1","2026-01-02"]', '[7,"2026-01-01"]']
    assert [orjson.loads(key) for key in keys][2] == [7, "2026-01-01"]


async def test_records_without_a_usable_key_are_rejected_with_reasons(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = [
        {"id": "ok-1"},
        {"name": "no id at all"},
        {"id": None},
        {"id": {"nested": 1}},
        {"id": [1, 2]},
        {"id": True},
        {"id": ""},
        "not an object",
        {"id": "ok-2"},
    ]
    url = upstream.route("/mixed", lambda _: JSONResponse({"data": data}))

    (page,) = await collect(http, source(url, records_path="data"))

    assert [row.key for row in page.records.rows] == ['"ok-1"', '"ok-2"']
    rejections = {rejection.index: rejection.reason for rejection in page.records.rejections}
    assert sorted(rejections) == [1, 2, 3, 4, 5, 6, 7]
    assert "missing" in rejections[1]
    assert "missing" in rejections[2]
    assert "dict" in rejections[3]
    assert "list" in rejections[4]
    assert "bool" in rejections[5]
    assert "missing" in rejections[6]
    assert "not an object" in rejections[7]
    assert page.records.seen == len(data)


async def test_compound_key_with_one_part_missing_is_rejected(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = [{"a": 1, "b": 2}, {"a": 1}]
    url = upstream.route("/compound", lambda _: JSONResponse(data))

    (page,) = await collect(http, source(url, primary_key=["a", "b"]))

    assert [row.key for row in page.records.rows] == ["[1,2]"]
    assert [(r.index, "'b'" in r.reason) for r in page.records.rejections] == [(1, True)]


async def test_number_and_string_keys_stay_distinct(
    upstream: Upstream, http: UpstreamClient
) -> None:
    data = [{"id": 1, "v": "number"}, {"id": "1", "v": "string"}, {"id": 1.5, "v": "float"}]
    url = upstream.route("/ids", lambda _: JSONResponse(data))

    (page,) = await collect(http, source(url))

    assert [row.key for row in page.records.rows] == ["1", '"1"', "1.5"]


def test_canonical_hash_ignores_key_order_at_every_depth() -> None:
    one = {"id": 1, "b": {"y": 2, "x": 1}, "a": [{"q": 1, "p": 2}]}
    two = {"a": [{"p": 2, "q": 1}], "b": {"x": 1, "y": 2}, "id": 1}

    first, second = extract([one, two], "id").rows

    assert first.data == second.data
    assert first.hash == second.hash
    assert first.data == '{"a":[{"p":2,"q":1}],"b":{"x":1,"y":2},"id":1}'


@pytest.mark.parametrize(
    "changed",
    [
        {"id": 1, "value": 2},
        {"id": 1, "value": "1"},
        {"id": 1, "value": 1, "extra": None},
        {"id": 1, "value": [1]},
    ],
)
def test_canonical_hash_changes_with_content(changed: dict[str, Any]) -> None:
    (original,) = extract([{"id": 1, "value": 1}], "id").rows
    (other,) = extract([changed], "id").rows

    assert other.key == original.key
    assert other.hash != original.hash


async def test_hash_is_stable_across_fetches(upstream: Upstream, http: UpstreamClient) -> None:
    """The same upstream data fetched twice, serialised in different key orders, hashes equal."""
    orders = iter([{"id": 1, "a": 1, "b": 2}, {"b": 2, "a": 1, "id": 1}])
    url = upstream.route("/one", lambda _: JSONResponse([next(orders)]))

    (first,) = await collect(http, source(url))
    (second,) = await collect(http, source(url))

    assert first.records.rows[0].hash == second.records.rows[0].hash


def test_packed_values_join_on_the_unit_separator_and_refuse_empty_ones() -> None:
    assert packed(["a", "b"]) == "a\x1fb"
    assert packed([]) == ""
    with pytest.raises(ValueError, match="empty"):
        packed(["a", ""])


def test_canonical_keys_and_data_never_hold_the_unit_separator() -> None:
    record = {"id": "a\x1fb", "v\x1f": "c\x1fd", "n": ["\x1f"]}
    (row,) = extract([record], "id").rows
    assert "\x1f" not in row.key and "\x1f" not in row.data
    assert orjson.loads(row.key) == "a\x1fb" and orjson.loads(row.data) == record
