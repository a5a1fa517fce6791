"""Pages that come back byte for byte as they were stored are neither decoded nor
compared (every task, conditional or not); pages whose bytes differ but whose records'
bytes are the stored ones (a stamped envelope) are not compared either (only their
envelope is decoded: `tests/sync/test_envelope.py`); anything else is compared record by
record.

Whether a page was compared is seen from the database: a stored record whose hash is
made stale behind Backsync's back is rewritten by a comparison, and left alone by a
page that was recognised by its bytes.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.config import Settings
from service.db import create_engine
from tests.fixtures.upstream import Upstream, cursor, make_records
from tests.helpers import create_task, feed, http_task, sync, wait_run

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}


async def _make_stale(settings: Settings, task_id: str, key: str) -> None:
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE record SET hash = 'stale' WHERE task_id = :task AND key = :key"),
                {"task": task_id, "key": f'"{key}"'},
            )
    finally:
        await engine.dispose()


async def _is_stale(settings: Settings, task_id: str, key: str) -> bool:
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            stored = await connection.execute(
                text("SELECT hash FROM record WHERE task_id = :task AND key = :key"),
                {"task": task_id, "key": f'"{key}"'},
            )
            return bool(stored.scalar_one() == "stale")
    finally:
        await engine.dispose()


def _stats(run: dict[str, Any]) -> tuple[int, ...]:
    stats = run["stats"]
    names = ("pages", "records_seen", "inserted", "updated", "unchanged", "rejected")
    return tuple(stats[name] for name in names)


async def test_a_page_back_byte_for_byte_counts_unchanged_without_being_compared(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    settings: Settings,
    worker: object,
) -> None:
    records: list[dict[str, Any]] = [*make_records(29), {"no_id": True}]
    url = upstream.route("/same", cursor(records, size=10))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    first = await sync(client, auth, task["id"])
    assert _stats(first) == (3, 30, 29, 0, 0, 1)
    await _make_stale(settings, task["id"], "r000000")
    seq_before = len(await feed(client, auth, task["id"]))

    second = await sync(client, auth, task["id"])

    assert second["status"] == "succeeded"
    assert _stats(second) == (3, 30, 0, 0, 29, 1)  # the counts the pages had last time
    assert second["stats"]["not_modified"] == 0 and second["stats"]["requests"] == 3
    assert await _is_stale(settings, task["id"], "r000000")  # not compared
    assert len(await feed(client, auth, task["id"])) == seq_before

    records[15] = {**records[15], "value": -1}  # the second page changes: compared again
    third = await sync(client, auth, task["id"])
    assert _stats(third) == (3, 30, 0, 1, 28, 1)
    assert await _is_stale(settings, task["id"], "r000000")  # the first page still matched


async def test_changed_settings_make_stored_digests_useless(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route("/rekeyed", cursor(make_records(20), size=10))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    assert (await sync(client, auth, task["id"]))["stats"]["inserted"] == 20

    patched = await client.patch(
        f"/v1/tasks/{task['id']}",
        json={"source": {"primary_key": "value"}},
        headers={**auth, "Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    rekeyed = await sync(client, auth, task["id"])

    assert rekeyed["stats"]["inserted"] == 20  # the same bytes, read under the new key


def _stamping(records: list[dict[str, Any]]) -> Any:
    """Pages of 10 from `records` (read at each request), in an envelope that differs on
    every answer."""
    served = itertools.count()

    def stamped(request: Request) -> Response:
        start = int(request.query_params.get("next_token") or 0)
        following = start + 10
        return JSONResponse(
            {
                "generated": next(served),
                "data": records[start:following],
                "next_token": str(following) if following < len(records) else None,
            }
        )

    return stamped


async def test_stamped_pages_whose_records_are_the_stored_ones_are_not_compared(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    settings: Settings,
    worker: object,
) -> None:
    records: list[dict[str, Any]] = [*make_records(19), {"no_id": True}]
    url = upstream.route("/stamped", _stamping(records))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    assert _stats(await sync(client, auth, task["id"])) == (2, 20, 19, 0, 0, 1)
    await _make_stale(settings, task["id"], "r000000")
    seq_before = len(await feed(client, auth, task["id"]))

    again = await sync(client, auth, task["id"])

    assert _stats(again) == (2, 20, 0, 0, 19, 1)  # the counts the pages had last time
    assert await _is_stale(settings, task["id"], "r000000")  # not compared
    assert len(await feed(client, auth, task["id"])) == seq_before


async def test_a_stamped_page_with_a_changed_record_is_compared_record_by_record(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    settings: Settings,
    worker: object,
) -> None:
    records = make_records(20)
    url = upstream.route("/stamped-changing", _stamping(records))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    await sync(client, auth, task["id"])
    await _make_stale(settings, task["id"], "r000000")
    await _make_stale(settings, task["id"], "r000011")
    records[15] = {**records[15], "value": -1}

    again = await sync(client, auth, task["id"])

    # The second page is compared: its changed record and the stale one are rewritten.
    assert _stats(again) == (2, 20, 0, 2, 18, 0)
    assert not await _is_stale(settings, task["id"], "r000011")
    assert await _is_stale(settings, task["id"], "r000000")  # the first page was not
    changed = await feed(client, auth, task["id"], after=20)
    assert [record["data"]["value"] for record in changed if record["key"] == "r000015"] == [-1]


async def test_a_page_repeating_a_key_is_always_compared(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    settings: Settings,
    worker: object,
) -> None:
    records = make_records(10)
    repeated = [*records, {**records[0], "value": 99}]  # the last copy of r000000 wins
    url = upstream.route("/repeats", cursor(repeated, size=20))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    first = await sync(client, auth, task["id"])
    assert _stats(first) == (1, 11, 10, 1, 0, 0)
    await _make_stale(settings, task["id"], "r000001")

    again = await sync(client, auth, task["id"])

    assert not await _is_stale(settings, task["id"], "r000001")
    assert _stats(again) == (1, 11, 0, 2, 9, 0)  # the stale one, and the superseded copy


async def test_a_full_refresh_reads_every_page_again(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    settings: Settings,
    worker: object,
) -> None:
    records = [{"id": f"e{i}", "ts": f"2026-03-01T0{i}:00:00Z"} for i in range(5)]
    url = upstream.route("/events", lambda _: JSONResponse({"data": records}))
    incremental = {"cursor_path": "ts", "param": "since", "initial_value": "2026-01-01T00:00:00Z"}
    body = http_task(url, records_path="data", incremental=incremental)
    task = await create_task(client, auth, body)
    await sync(client, auth, task["id"])
    await _make_stale(settings, task["id"], "e0")

    response = await client.post(
        f"/v1/tasks/{task['id']}/runs", json={"full_refresh": True}, headers=auth
    )
    assert response.status_code == 202, response.text
    refresh = await wait_run(client, auth, response.json()["id"])

    assert _stats(refresh) == (1, 5, 0, 1, 4, 0)
    assert not await _is_stale(settings, task["id"], "e0")
