"""A stamped page (an envelope that differs on every answer around the same records) is
recognised by its records' bytes and read without decoding them; anything that does
not split cleanly is decoded whole, as before."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response

from service.sync import Limits, Page, PageRequest, Source, iter_pages
from service.sync.client import UpstreamClient
from service.sync.conditional import Validator, digest_seed, page_key
from service.sync.envelope import RECORDS_LEFT_OUT, paginates_without_records, split_records
from service.sync.errors import InvalidBody
from service.sync.fetch import fetch_page
from service.sync.paths import MISSING, get_path
from tests.fixtures.upstream import Upstream, make_records
from tests.sync.helpers import QUICK, rows, source

CURSOR = {"type": "cursor", "cursor_path": "meta.next", "cursor_param": "after"}


# ---- splitting a body --------------------------------------------------------------


def test_the_envelope_is_decoded_and_the_records_are_left_as_their_bytes() -> None:
    raw = b'{"at": "12:00", "meta": {"next": "b"}, "data": [{"id": 1}, {"id": 2}], "n": 2}'

    parts = split_records(raw, "data")

    assert parts is not None
    assert bytes(memoryview(parts.records)) == b'[{"id": 1}, {"id": 2}]'
    body = parts.body()
    assert body == {"at": "12:00", "meta": {"next": "b"}, "data": RECORDS_LEFT_OUT, "n": 2}
    assert list(body) == ["at", "meta", "data", "n"]  # the upstream's order


def test_records_inside_nested_objects_keep_the_fields_beside_them() -> None:
    raw = b'{"data": {"s": 1, "data": [1, 2], "t": [3]}, "next": null}'

    parts = split_records(raw, "data.data")

    assert parts is not None
    assert bytes(memoryview(parts.records)) == b"[1, 2]"
    assert parts.body() == {"data": {"s": 1, "data": RECORDS_LEFT_OUT, "t": [3]}, "next": None}


def test_no_path_leads_through_the_records_left_out() -> None:
    parts = split_records(b'{"data": [{"id": 7}]}', "data")

    assert parts is not None
    assert get_path(parts.body(), "data.0.id") is MISSING
    assert get_path(parts.body(), "data.-1") is MISSING


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b'[{"id": 1}]', "data"),  # the body is the list
        (b'{"data": [1]}', ""),  # no envelope: the page digest covers the body
        (b'{"items": [1]}', "data"),  # not there: decoded whole, and reported as ever
        (b'{"data": [[1], [2]]}', "data.0"),  # a list index
        (b'{"data": "x"}', "data.items"),  # a string on the way
        (b'{"data": [1]', "data"),  # truncated
        (b'{"data": [1]} x', "data"),  # trailing bytes
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "data": [1]}', "data"),  # too deep
        (b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "data"),
    ],
)
def test_a_body_that_does_not_split_cleanly_is_left_to_the_whole_decode(
    raw: bytes, path: str
) -> None:
    assert split_records(raw, path) is None


def test_an_envelope_orjson_refuses_is_not_decoded_here() -> None:
    """msgspec only skips a field; orjson decodes it, and may refuse what msgspec took
    (a number out of range): then the body is decoded whole, and fails as it did."""
    parts = split_records(b'{"n": 1e999999, "data": [1]}', "data")

    assert parts is not None
    assert bytes(memoryview(parts.records)) == b"[1]"
    assert parts.body() is None


def test_pagination_that_reads_inside_the_records_needs_them_decoded() -> None:
    def at(**fields: Any) -> Source:
        return source("http://127.0.0.1/x", **fields)

    assert paginates_without_records(at(records_path="data", pagination=CURSOR))
    assert not paginates_without_records(at(records_path="", pagination=CURSOR))
    last_id = {"type": "cursor", "cursor_path": "data.-1.id", "cursor_param": "after"}
    assert not paginates_without_records(at(records_path="data", pagination=last_id))
    whole = {"type": "cursor", "cursor_path": "data", "cursor_param": "after"}
    assert not paginates_without_records(at(records_path="data", pagination=whole))
    beside = {"type": "cursor", "cursor_path": "database.next", "cursor_param": "after"}
    assert paginates_without_records(at(records_path="data", pagination=beside))


# ---- against a real upstream -------------------------------------------------------


class Stamping:
    """Pages of `size` records in an envelope stamped per answer; the next page's token
    carries `generation` (an upstream that reissues its cursors), and `spaced` re-renders
    the records with other spacing (the same records, other bytes)."""

    def __init__(self, records: list[dict[str, Any]], size: int, cursor_path: str) -> None:
        self.records, self.size, self.cursor_path = records, size, cursor_path
        self.served = itertools.count()
        self.generation = 0
        self.spaced = False

    def __call__(self, request: Request) -> Response:
        token = request.query_params.get("after", "")
        start = int(token.split("-")[-1]) if token else 0
        page = self.records[start : start + self.size]
        following = start + self.size
        rendered = orjson.dumps(page, option=orjson.OPT_INDENT_2 if self.spaced else 0)
        next_token = f"g{self.generation}-{following}" if following < len(self.records) else None
        envelope = {"stamp": next(self.served), "meta": {"next": next_token}}
        if self.cursor_path.startswith("data."):
            envelope["meta"] = {}
        head = orjson.dumps(envelope)[:-1]
        return Response(head + b', "data": ' + rendered + b"}", media_type="application/json")


async def walk(client: UpstreamClient, src: Source, known: dict[str, Validator]) -> list[Page]:
    async def lookup(key: str) -> Validator | None:
        return known.get(key)

    pages = iter_pages(client, src, Limits(), validators=lookup, ahead=4, retry=QUICK)
    return [page async for page in pages]


def remembered(pages: list[Page], known: dict[str, Validator]) -> dict[str, Validator]:
    """What a run leaves stored: the validators it had, updated by the ones it wrote."""
    return {**known, **{page_key(p.request): p.validator for p in pages if p.validator}}


async def test_a_stamped_page_whose_records_are_the_stored_ones_is_not_decoded(
    upstream: Upstream, http: UpstreamClient
) -> None:
    stamping = Stamping(make_records(25), 10, "meta.next")
    src = source(upstream.route("/stamped", stamping), records_path="data", pagination=CURSOR)
    first = await walk(http, src, {})
    assert len(rows(first)) == 25 and all(not page.unread for page in first)
    known = remembered(first, {})

    # One page by hand: only its envelope is decoded, its records' bytes are the stored.
    seed = digest_seed(src)
    request = PageRequest(str(src.url), {}, 0)
    stored = known[page_key(request)]
    fetched = await fetch_page(
        http, src, request, Limits(), digest_seed=seed, records_known=stored.records_digest
    )
    assert fetched.records_unread
    assert fetched.body["data"] is RECORDS_LEFT_OUT and fetched.body["meta"]["next"] == "g0-10"
    assert fetched.digest != stored.digest  # the bytes differ: the stamp

    again = await walk(http, src, known)

    assert [page.unread for page in again] == [True, True, True]
    assert [page.validator for page in again] == [None, None, None]  # nothing new to store
    assert [p.next.params if p.next else None for p in again] == [
        {"after": "g0-10"},
        {"after": "g0-20"},
        None,
    ]


async def test_a_stamped_page_that_now_leads_elsewhere_is_remembered_with_its_new_next_page(
    upstream: Upstream, http: UpstreamClient
) -> None:
    stamping = Stamping(make_records(25), 10, "meta.next")
    src = source(upstream.route("/reissued", stamping), records_path="data", pagination=CURSOR)
    known = remembered(await walk(http, src, {}), {})
    stamping.generation = 1  # the same records, new cursors

    moved = await walk(http, src, known)

    # The first page is where it was, with its records: counted as stored, remembered
    # with its new next page. The pages after it are at new URLs: read as new pages.
    assert [page.unread for page in moved] == [True, False, False]
    assert moved[0].discarded == 2  # the old cursors' predictions, fetched ahead
    new, old = moved[0].validator, known[page_key(moved[0].request)]
    assert new is not None
    assert new.next_page is not None and new.next_page["params"] == {"after": "g1-10"}
    assert (new.records_seen, new.rejected, new.records_digest, new.digest) == (
        old.records_seen,
        old.rejected,
        old.records_digest,
        old.digest,
    )
    assert rows(moved) == rows(await walk(http, src, {}))[10:]
    upstream.requests.clear()

    settled = await walk(http, src, remembered(moved, known))

    assert [page.unread for page in settled] == [True, True, True]
    assert [page.discarded for page in settled] == [0, 0, 0]  # predicted right again
    assert len(upstream.hits("/reissued")) == 3


async def test_a_cursor_read_from_the_records_decodes_them_but_skips_their_comparison(
    upstream: Upstream, http: UpstreamClient
) -> None:
    last_id = {"type": "cursor", "cursor_path": "data.-1.id", "cursor_param": "after"}
    records = [{"id": f"{n}", "v": n} for n in range(1, 26)]
    stamping = Stamping(records, 10, "data.-1.id")

    def by_id(request: Request) -> Response:
        after = request.query_params.get("after")
        start = next(i + 1 for i, r in enumerate(records) if r["id"] == after) if after else 0
        served = Stamping(records[start:], 10, "data.-1.id")
        served.served = stamping.served
        return served(_without_query(request))

    src = source(upstream.route("/by-id", by_id), records_path="data", pagination=last_id)
    first = await walk(http, src, {})
    assert len(rows(first)) == 25

    again = await walk(http, src, remembered(first, {}))

    assert [page.unread for page in again] == [True, True, True, True]  # 10, 10, 5, empty
    assert [p.next.params if p.next else None for p in again] == [
        {"after": "10"},
        {"after": "20"},
        {"after": "25"},
        None,
    ]


async def test_the_same_records_in_other_bytes_are_decoded_and_compared(
    upstream: Upstream, http: UpstreamClient
) -> None:
    stamping = Stamping(make_records(25), 10, "meta.next")
    src = source(upstream.route("/respaced", stamping), records_path="data", pagination=CURSOR)
    first = await walk(http, src, {})
    stamping.spaced = True

    again = await walk(http, src, remembered(first, {}))

    assert [page.unread for page in again] == [False, False, False]
    assert rows(again) == rows(first)


def _without_query(request: Request) -> Request:
    """The request as a handler that starts from the first of the records it is given
    sees it."""
    scope = dict(request.scope)
    scope["query_string"] = b""
    return Request(scope)


async def test_offset_pages_in_a_nested_envelope_are_counted_from_what_was_stored(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """Offset pagination steps by the page's record count: a page read without its
    records counts what its validator stored. Records under `result.items`, a total
    beside them, and a last page whose records are `null`."""
    records = make_records(30)
    served = itertools.count()

    def offsets(request: Request) -> Response:
        offset = int(request.query_params.get("offset", 0))
        page = records[offset : offset + 10] or None
        body = {"stamp": next(served), "result": {"total": 40, "items": page}}
        return Response(orjson.dumps(body), media_type="application/json")

    paging = {"type": "offset", "limit": 10, "total_path": "result.total"}
    src = source(
        upstream.route("/offsets", offsets), records_path="result.items", pagination=paging
    )
    first = await walk(http, src, {})
    assert [len(page.records.rows) for page in first] == [10, 10, 10, 0]  # then `null`

    again = await walk(http, src, remembered(first, {}))

    assert [page.unread for page in again] == [True, True, True, True]
    assert [(p.next.params or {}).get("offset") if p.next else None for p in again] == [
        10,
        20,
        30,
        None,
    ]


async def test_a_conditional_page_whose_records_are_stored_keeps_its_new_etag(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """A new ETag over the same records (the envelope changed): the page is not decoded,
    and its validator is stored again with the new tag, its counts unchanged."""
    records = make_records(5)
    version = ["v1"]

    def tagged(request: Request) -> Response:
        tag = f'"{version[0]}"'
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers={"ETag": tag})
        body = {"at": version[0], "data": records, "next": None}
        return Response(orjson.dumps(body), media_type="application/json", headers={"ETag": tag})

    paging = {"type": "cursor", "cursor_path": "next", "cursor_param": "after"}
    src = source(
        upstream.route("/tagged", tagged), records_path="data", pagination=paging, conditional=True
    )
    first = await walk(http, src, {})
    known = remembered(first, {})
    version[0] = "v2"

    again = await walk(http, src, known)

    assert [page.unread for page in again] == [True]
    assert not again[0].not_modified
    new, old = again[0].validator, known[page_key(again[0].request)]
    assert new is not None and new.etag == '"v2"' and old.etag == '"v1"'
    assert (new.records_seen, new.records_digest) == (old.records_seen, old.records_digest)


async def test_stored_records_in_an_envelope_orjson_refuses_fail_the_page_as_before(
    upstream: Upstream, http: UpstreamClient
) -> None:
    records = make_records(3)
    broken = [False]

    def answer(_request: Request) -> Response:
        head = b'{"n": 1e999999, ' if broken[0] else b'{"n": 1, '
        return Response(head + b'"data": ' + orjson.dumps(records) + b"}")

    src = source(upstream.route("/refused", answer), records_path="data")
    known = remembered(await walk(http, src, {}), {})
    broken[0] = True

    with pytest.raises(InvalidBody, match="not valid JSON"):
        await walk(http, src, known)
