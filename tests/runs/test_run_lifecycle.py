from __future__ import annotations

import httpx

from tests.fixtures.upstream import Upstream, cursor, make_records
from tests.helpers import create_task, feed, http_task, sync


async def test_a_run_fetches_every_page_and_the_feed_shows_the_records(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    records = make_records(250)
    url = upstream.route("/activity", cursor(records, size=100))
    task = await create_task(
        client,
        auth,
        http_task(
            url,
            records_path="data",
            pagination={
                "type": "cursor",
                "cursor_path": "next_token",
                "cursor_param": "next_token",
            },
        ),
    )

    run = await sync(client, auth, task["id"])

    assert run["status"] == "succeeded", run
    assert run["stats"]["pages"] == 3
    assert run["stats"]["inserted"] == 250
    assert len(upstream.hits("/activity")) == 3
    items = await feed(client, auth, task["id"])
    assert [item["data"] for item in items] == records
    seqs = [item["seq"] for item in items]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
