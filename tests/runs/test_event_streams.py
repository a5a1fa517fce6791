"""Event streams cannot starve the API: one shared poll per process, a cap of open
streams per key, and an end for streams whose run waits too long (issue 11 item 8)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import event

from service.config import Settings
from service.db import create_engine, reading
from service.runs.events import ProgressHub, run_events
from service.runs.schemas import RunOut
from tests.fixtures.app import MakeKey, api_client, serving
from tests.helpers import create_task, http_task, trigger


def _parse(block: str) -> tuple[str, dict[str, Any]]:
    fields = dict(
        line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
    )
    return fields["event"], json.loads(fields["data"])


async def _queued_runs(
    client: httpx.AsyncClient, auth: dict[str, str], count: int
) -> list[dict[str, Any]]:
    """`count` runs that stay queued: no worker runs in these tests."""
    runs = []
    for n in range(count):
        task = await create_task(client, auth, http_task("http://127.0.0.1:9/x", name=f"t{n}"))
        runs.append(await trigger(client, auth, task["id"]))
    return runs


async def test_a_stream_whose_run_waits_too_long_ends_with_a_timeout_event(
    settings: Settings, auth: dict[str, str]
) -> None:
    impatient = settings.model_copy(
        update={"events_max_wait_seconds": 0.5, "events_poll_seconds": 0.05}
    )
    async with api_client(impatient) as client:
        (run,) = await _queued_runs(client, auth, 1)
        started = time.monotonic()
        response = await client.get(f"/v1/runs/{run['id']}/events", headers=auth)
        waited = time.monotonic() - started

    events = [_parse(block) for block in response.text.strip().split("\n\n")]
    assert [name for name, _ in events] == ["progress", "timeout"]
    assert events[-1][1]["id"] == run["id"]
    assert events[-1][1]["status"] == "queued"  # the run itself goes on waiting
    assert waited >= 0.5


@contextlib.asynccontextmanager
async def _open_stream(
    http: httpx.AsyncClient, run_id: str, headers: dict[str, str]
) -> AsyncIterator[httpx.Response]:
    async with http.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
        yield response


async def test_a_key_past_its_cap_of_open_streams_gets_429_until_one_closes(
    settings: Settings, make_key: MakeKey
) -> None:
    capped = settings.model_copy(update={"events_max_streams_per_key": 2})
    busy, other = await make_key("acme"), await make_key("acme")
    async with serving(capped) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        (run,) = await _queued_runs(http, busy, 1)
        async with contextlib.AsyncExitStack() as streams:
            for _ in range(2):
                opened = await streams.enter_async_context(_open_stream(http, run["id"], busy))
                assert opened.status_code == 200
            refused = await http.get(f"/v1/runs/{run['id']}/events", headers=busy)
            async with _open_stream(http, run["id"], other) as others:
                other_status = others.status_code
        reopened = None
        for _ in range(100):  # the server notices the closed streams
            async with _open_stream(http, run["id"], busy) as again:
                reopened = again.status_code
            if reopened == 200:
                break
            await asyncio.sleep(0.05)

    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"] == "urn:backsync:problem:too-many-streams"
    assert int(refused.headers["Retry-After"]) >= 1
    assert other_status == 200  # the cap is per key
    assert reopened == 200


async def test_every_stream_of_a_process_is_served_by_one_read_per_interval(
    settings: Settings, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """Twenty streams on ten runs: the run table is read once per poll for all of them,
    not once per stream; a change reaches every stream of its run."""
    runs = [RunOut.model_validate(run) for run in await _queued_runs(client, auth, 10)]
    engine = create_engine(settings.database_url)
    reads_of_runs = 0

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        nonlocal reads_of_runs
        reads_of_runs += "FROM run" in statement

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    hub = ProgressHub(reading(engine), poll_seconds=0.05, max_streams_per_key=100)
    streams = [
        run_events(hub, hub.open_slot("k"), runs[n % 10], max_wait_seconds=60) for n in range(20)
    ]
    try:
        firsts = [await anext(stream) for stream in streams]
        started = time.monotonic()
        await asyncio.sleep(0.5)
        cancelled = await client.post(f"/v1/runs/{runs[0].id}/cancel", headers=auth)
        assert cancelled.status_code == 200
        finals = await asyncio.wait_for(asyncio.gather(anext(streams[0]), anext(streams[10])), 5)
        polls = (time.monotonic() - started) / hub.poll_seconds
    finally:
        for stream in streams:
            await stream.aclose()
        await hub.close()
        await engine.dispose()

    assert all(_parse(first)[0] == "progress" for first in firsts)
    assert [_parse(final)[:1] for final in finals] == [("status",), ("status",)]
    assert all(_parse(final)[1]["status"] == "cancelled" for final in finals)
    assert 1 <= reads_of_runs <= polls + 2  # one statement per interval for all 20 streams
    assert hub.open_streams("k") == 0
