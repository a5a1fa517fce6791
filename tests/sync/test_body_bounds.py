"""Bodies read within bounds (`service.sync.body`): decoded bytes counted while they
arrive, a decompression bomb refused after its first MiB, and the process's in-flight
bytes (`BodyBudget`) making a fetch wait for room. Real upstream on loopback."""

from __future__ import annotations

import asyncio
import gzip
import re
import zlib
from contextlib import aclosing
from typing import Any

import orjson
import pytest
from starlette.responses import Response

from service.sync import BodyBudget, Limits, Page, Source, iter_pages
from service.sync.body import PIECE, RATIO_FLOOR
from service.sync.client import UpstreamClient
from service.sync.errors import CompressionBomb, ResponseTooLarge
from service.sync.pages import fetch_one
from service.sync.paginators import first_request
from tests.fixtures.upstream import Upstream, gzip_bomb, make_records
from tests.sync.helpers import QUICK, collect, rows, source

MiB = 1024 * 1024


def served(body: bytes, encoding: str | None = "gzip") -> Response:
    headers = {"Content-Encoding": encoding} if encoding else {}
    return Response(body, media_type="application/json", headers=headers)


async def test_a_decompression_bomb_is_refused_after_its_first_mib(
    upstream: Upstream, http: UpstreamClient
) -> None:
    url = upstream.route("/bomb", lambda _: served(gzip_bomb()))
    bodies = BodyBudget(None, max_ratio=100)

    with pytest.raises(CompressionBomb) as caught:
        await fetch_one(
            http,
            source(url, records_path="data"),
            Limits(),
            first_request(source(url)),
            bodies=bodies,
            retry=QUICK,
        )

    error = caught.value
    assert (error.code, error.retryable) == ("compression_ratio_exceeded", False)
    compressed, decoded = map(
        int, re.findall(r"(\d+) compressed bytes had already become (\d+)", error.message)[0]
    )
    assert decoded > 100 * compressed
    # Refused at the first piece past 100 times what had come (the whole gzip, here):
    # the engine never held more, where httpx would have inflated all 50 MiB.
    refused_by = max(RATIO_FLOOR, 100 * compressed) + PIECE
    assert decoded <= refused_by < 10 * MiB
    assert bodies.peak <= refused_by
    assert bodies.used == 0  # and gave back


async def test_a_body_over_the_limit_once_decoded_is_refused_while_it_streams(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """Compressed well within the ratio, but larger than the task allows once decoded."""
    records = [{"id": i, "pad": f"{i:08d}" * 8} for i in range(60_000)]
    body = gzip.compress(orjson.dumps({"data": records}))
    assert len(body) < 2 * MiB < len(orjson.dumps({"data": records}))
    url = upstream.route("/big", lambda _: served(body))
    bodies = BodyBudget(None)

    with pytest.raises(ResponseTooLarge, match="exceeds max_response_bytes=2097152 once decoded"):
        await collect_with(http, url, Limits(max_response_bytes=2 * MiB), bodies)

    assert bodies.peak <= 2 * MiB + 256 * 1024  # never more than the limit and a piece


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as RFC 9110 means it
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw, as many servers send it
        ("gzip, gzip", lambda data: gzip.compress(gzip.compress(data))),
        ("br", lambda data: data),  # not one we decode: left as it is (as httpx does)
    ],
)
async def test_compressed_bodies_are_decoded(
    upstream: Upstream, http: UpstreamClient, encoding: str, compress: Any
) -> None:
    data = make_records(3000)  # several pieces once decoded
    url = upstream.route("/z", lambda _: served(compress(orjson.dumps(data)), encoding))

    pages = await collect(http, source(url))

    assert rows(pages) == data


async def test_a_small_body_may_compress_as_well_as_it_likes(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """Under `RATIO_FLOOR` decoded, the ratio is not looked at: a page of nulls is fine."""
    data = [{"id": 1, "v": None}, {"id": 2, "pad": " " * 900_000}]
    body = gzip.compress(orjson.dumps(data))
    assert len(orjson.dumps(data)) > 100 * len(body)
    url = upstream.route("/nulls", lambda _: served(body))

    pages = await collect_with(http, url, Limits(), BodyBudget(None, max_ratio=100))

    assert len(rows(pages)) == len(data)


async def collect_with(
    http: UpstreamClient, url: str, limits: Limits, bodies: BodyBudget
) -> list[Page]:
    pages = []
    async with aclosing(iter_pages(http, source(url), limits, bodies=bodies, retry=QUICK)) as it:
        async for page in it:
            pages.append(page)
    return pages


# ---- the process's in-flight bytes ---------------------------------------------------


async def _one_page_cost(http: UpstreamClient, src: Source) -> int:
    """What the first page of `src` holds of a budget once fetched (and gives back)."""
    bodies = BodyBudget(None)
    page = await fetch_one(http, src, Limits(), first_request(src), bodies=bodies)
    held = bodies.used
    page.release()
    assert bodies.used == 0
    return held


async def test_a_second_body_is_not_fetched_until_the_first_is_released(
    upstream: Upstream, http: UpstreamClient
) -> None:
    first_url = upstream.route("/a", lambda _: served(orjson.dumps(make_records(2000)), None))
    second_url = upstream.route("/b", lambda _: served(orjson.dumps(make_records(2000)), None))
    cost = await _one_page_cost(http, source(first_url))
    bodies = BodyBudget(cost + 1000)  # room for one page, not for the next's first bytes
    first = await fetch_one(
        http, source(first_url), Limits(), first_request(source(first_url)), bodies=bodies
    )
    first.handed_over()

    second = asyncio.create_task(
        fetch_one(
            http, source(second_url), Limits(), first_request(source(second_url)), bodies=bodies
        )
    )
    await asyncio.sleep(0.3)

    assert not second.done()
    assert upstream.hits("/b") == []  # waiting for room before asking, not mid-answer
    first.release()
    page = await second
    assert len(page.records.rows) == 2000
    assert len(upstream.hits("/b")) == 1
    assert bodies.peak <= cost + 1000
    page.release()
    assert bodies.used == 0


async def test_pages_give_their_bytes_back_as_the_caller_moves_on(
    upstream: Upstream, http: UpstreamClient
) -> None:
    """A page holds its share until the caller asks for the next: a run of many pages
    needs room for about two (the one being stored, the one being fetched)."""
    records = make_records(5000)

    def page(request: Any) -> Response:
        start = int(request.query_params.get("next_token") or 0)
        following = start + 1000 if start + 1000 < len(records) else None
        body = {"data": records[start : start + 1000], "next_token": following}
        return served(orjson.dumps(body), None)

    url = upstream.route("/pages", page)
    cursor = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}
    src = source(url, records_path="data", pagination=cursor)
    cost = await _one_page_cost(http, src)
    bodies = BodyBudget(None)

    stored = []
    pages = iter_pages(
        http,
        src,
        Limits(),
        bodies=bodies,
        ahead=4,
        retry=QUICK,
    )
    async with aclosing(pages):
        async for fetched in pages:
            stored.extend(fetched.records.rows)

    assert len(stored) == 5000
    assert bodies.peak <= 2 * cost * 1.2  # two pages at most (the last is a little smaller)
    assert bodies.used == 0


async def test_a_body_larger_than_the_whole_budget_is_refused_not_waited_for(
    upstream: Upstream, http: UpstreamClient
) -> None:
    url = upstream.route("/huge", lambda _: served(orjson.dumps(make_records(20_000)), None))
    bodies = BodyBudget(2 * MiB)

    with pytest.raises(ResponseTooLarge, match="more than the 2 MiB this server lets"):
        await collect_with(http, url, Limits(), bodies)

    assert bodies.used == 0


async def test_a_wait_for_room_does_not_count_against_the_timeout(
    upstream: Upstream, http: UpstreamClient
) -> None:
    url = upstream.route("/t", lambda _: served(orjson.dumps(make_records(2000)), None))
    cost = await _one_page_cost(http, source(url))
    bodies = BodyBudget(cost + 1000)
    first = await fetch_one(http, source(url), Limits(), first_request(source(url)), bodies=bodies)
    first.handed_over()
    quick = Limits(timeout_seconds=0.2)

    second = asyncio.create_task(
        fetch_one(http, source(url), quick, first_request(source(url)), bodies=bodies)
    )
    await asyncio.sleep(0.5)  # longer than the second fetch's timeout_seconds
    first.release()

    page = await second  # not an upstream_timeout
    assert len(page.records.rows) == 2000
    page.release()
