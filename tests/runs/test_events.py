"""Live progress over Server-Sent Events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.upstream import Upstream, cursor, make_records, slowly
from tests.helpers import create_task, http_task, trigger

DOCUMENT = Path(__file__).parents[2] / "openapi" / "openapi.json"
CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}


def _fields(stream: str) -> list[dict[str, str]]:
    return [
        dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        for block in stream.strip().split("\n\n")
    ]


def _parse(stream: str) -> list[tuple[str, dict[str, Any]]]:
    return [(fields["event"], json.loads(fields["data"])) for fields in _fields(stream)]


def _documented_event() -> dict[str, Any]:
    """What the committed document says one event of the stream is (the fuzz test leaves
    this stream out: it stays open while a run waits for a worker)."""
    operation = json.loads(DOCUMENT.read_text())["paths"]["/v1/runs/{run_id}/events"]["get"]
    schema: dict[str, Any] = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
    return schema


async def test_events_stream_progress_per_page_and_end_with_the_final_status(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    pages = cursor(make_records(40), size=10)

    url = upstream.route("/feed", slowly(pages, 0.3))
    task = await create_task(client, auth, http_task(url, records_path="data", pagination=CURSOR))
    run = await trigger(client, auth, task["id"])

    async with client.stream("GET", f"/v1/runs/{run['id']}/events", headers=auth) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join([chunk async for chunk in response.aiter_text()])

    documented = _documented_event()
    for fields in _fields(body):
        assert set(documented["required"]) <= set(fields) <= set(documented["properties"])
        assert fields["event"] in documented["properties"]["event"]["enum"]
    events = _parse(body)
    names = [name for name, _ in events]
    assert names[-1] == "status" and names.count("status") == 1
    assert events[-1][1]["status"] == "succeeded"
    progress_pages = [data["stats"]["pages"] for name, data in events if name == "progress"]
    assert progress_pages == sorted(progress_pages)
    assert len(set(progress_pages) - {0}) >= 3  # a progress event for (nearly) every page


async def test_events_of_another_tenants_run_are_404(
    client: httpx.AsyncClient, auth: dict[str, str], make_key: Any, upstream: Upstream
) -> None:
    task = await create_task(client, auth, http_task(upstream.base_url + "/x"))
    run = await trigger(client, auth, task["id"])
    other = await make_key("other-tenant")
    response = await client.get(f"/v1/runs/{run['id']}/events", headers=other)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
