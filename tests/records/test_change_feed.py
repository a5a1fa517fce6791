"""Upserts by key with a content hash, and the seq-ordered change feed (SPEC §5)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from starlette.responses import JSONResponse

from tests.fixtures.upstream import Upstream, make_records, page_number
from tests.helpers import create_task, feed, http_task, sync

PAGES = {"type": "page_number", "page_param": "page", "size_param": "per_page", "size": 20}


async def test_resync_counts_inserted_updated_unchanged_and_only_changes_reach_the_feed(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(100)
    url = upstream.route("/items", page_number(records, size=20))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=PAGES))
    first = await sync(client, auth, task["id"])
    assert first["stats"] | {"bytes": 0} == {
        "pages": 6,
        "requests": 6,
        "not_modified": 0,
        "records_seen": 100,
        "inserted": 100,
        "updated": 0,
        "unchanged": 0,
        "rejected": 0,
        "deleted": 0,
        "bytes": 0,
        "samples_written": 0,
        "samples_rejected": 0,
    }
    before = await feed(client, auth, task["id"])
    mark = max(item["seq"] for item in before)

    for record in records[10:20]:
        record["version"] = 2
    records.extend(make_records(5, prefix="new"))
    second = await sync(client, auth, task["id"])

    assert (
        second["stats"]["inserted"],
        second["stats"]["updated"],
        second["stats"]["unchanged"],
    ) == (5, 10, 90)
    changed = await feed(client, auth, task["id"], after=mark)
    assert {item["key"] for item in changed} == {r["id"] for r in records[10:20]} | {
        f"new{i:06d}" for i in range(5)
    }
    assert all(item["seq"] > mark for item in changed)
    assert all(item["data"]["version"] == 2 for item in changed if item["key"].startswith("r"))
    everything = await feed(client, auth, task["id"])
    assert len(everything) == 105  # one row per key, never duplicated
    seqs = [item["seq"] for item in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_an_unchanged_resync_writes_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(30)
    url = upstream.route("/same", page_number(records, size=20))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=PAGES))
    await sync(client, auth, task["id"])
    before = await feed(client, auth, task["id"])

    again = await sync(client, auth, task["id"])

    assert again["stats"]["unchanged"] == 30
    assert again["stats"]["inserted"] == again["stats"]["updated"] == 0
    after = await feed(client, auth, task["id"])
    assert [(i["seq"], i["updated_at"]) for i in after] == [
        (i["seq"], i["updated_at"]) for i in before
    ]
    tail = await client.get(
        f"/v1/tasks/{task['id']}/records", params={"after": before[-1]["seq"]}, headers=auth
    )
    assert tail.json() == {"items": [], "next_after": before[-1]["seq"]}


async def test_records_without_a_key_are_rejected_and_compound_keys_work(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    rows: list[Any] = [
        {"user": "u1", "day": "2026-01-01", "steps": 1},
        {"user": "u1", "day": "2026-01-02", "steps": 2},
        {"user": "u2", "day": "2026-01-01", "steps": 3},
        {"user": "u3", "steps": 4},
        {"day": "2026-01-01", "steps": 5},
        "not an object",
    ]
    url = upstream.route("/daily", lambda _r: JSONResponse({"data": rows}))
    body = http_task(url, records_path="data")
    body["source"]["primary_key"] = ["user", "day"]
    task = await create_task(client, auth, body)

    run = await sync(client, auth, task["id"])

    assert run["status"] == "succeeded"
    assert (run["stats"]["records_seen"], run["stats"]["inserted"], run["stats"]["rejected"]) == (
        6,
        3,
        3,
    )
    keys = [item["key"] for item in await feed(client, auth, task["id"])]
    assert keys == [["u1", "2026-01-01"], ["u1", "2026-01-02"], ["u2", "2026-01-01"]]


async def test_a_key_repeated_in_one_page_is_stored_once_with_its_last_copy(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    rows = [{"id": 1, "v": "a"}, {"id": 1, "v": "b"}, {"id": 2, "v": "c"}]
    url = upstream.route("/dup", lambda _r: JSONResponse(rows))
    task = await create_task(client, auth, http_task(url))

    run = await sync(client, auth, task["id"])

    assert (run["stats"]["inserted"], run["stats"]["updated"]) == (2, 1)
    items = await feed(client, auth, task["id"])
    assert [(i["key"], i["data"]["v"]) for i in items] == [(1, "b"), (2, "c")]


async def test_feed_pages_with_limit_and_next_after(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/ten", lambda _r: JSONResponse(make_records(10)))
    task = await create_task(client, auth, http_task(url))
    await sync(client, auth, task["id"])

    first = (await client.get(f"/v1/tasks/{task['id']}/records?limit=4", headers=auth)).json()
    second = (
        await client.get(
            f"/v1/tasks/{task['id']}/records?limit=4&after={first['next_after']}", headers=auth
        )
    ).json()

    assert len(first["items"]) == len(second["items"]) == 4
    assert first["next_after"] == first["items"][-1]["seq"]
    assert {i["key"] for i in first["items"]}.isdisjoint({i["key"] for i in second["items"]})
    bad = await client.get(f"/v1/tasks/{task['id']}/records?after=-1", headers=auth)
    assert bad.status_code == 422


async def test_control_characters_in_keys_and_data_survive_the_round_trip(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    """On PostgreSQL a page's keys, data and hashes travel packed into one string each,
    joined by U+001F (`runs.ledger.postgres.packed`): canonical JSON escapes it, so a
    record full of control characters comes back exactly, and compares unchanged."""
    odd = "\x1f\x1e\x00\n\t\x7f"
    records = [
        {"id": f"a{odd}{i}", "text": f"x{odd}y", f"k{odd}": [odd, {odd: i}]} for i in range(30)
    ]
    url = upstream.route("/odd", page_number(records, size=20))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=PAGES))

    first = await sync(client, auth, task["id"])
    upstream.route("/odd", with_envelope_stamp(page_number(records, size=20)))
    second = await sync(client, auth, task["id"])  # new bytes, same records: compared

    assert first["stats"]["inserted"] == 30
    assert (second["stats"]["unchanged"], second["stats"]["updated"]) == (30, 0)
    stored = await feed(client, auth, task["id"])
    assert sorted((item["key"], item["data"]) for item in stored) == sorted(
        (r["id"], r) for r in records
    )


def with_envelope_stamp(handler: Any) -> Any:
    """`handler`'s pages with a field that changes on every answer: the bytes differ, so
    no stored page digest applies and every record is compared with the stored one."""
    calls = iter(range(1_000_000))

    def stamped(request: Any) -> JSONResponse:
        body = json.loads(handler(request).body)
        return JSONResponse({**body, "served": next(calls)})

    return stamped
