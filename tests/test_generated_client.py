"""A Python client generated from the committed `openapi/openapi.json` by
openapi-python-client works against the running service: every endpoint round-trips,
and errors come back as the typed `Problem`, not as `None`."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.responses import JSONResponse

from tests.fixtures.upstream import Upstream, make_records
from tests.helpers import http_task

DOCUMENT = Path(__file__).parent.parent / "openapi" / "openapi.json"
PACKAGE = "backsync_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The client package, generated now from the committed document."""
    root = tmp_path_factory.mktemp("client")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            str(DOCUMENT),
            "--output-path",
            str(root / PACKAGE),
            "--meta",
            "none",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))


def module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_every_endpoint_round_trips_through_the_generated_client(
    generated: ModuleType,
    served: str,
    auth: dict[str, str],
    upstream: Upstream,
    worker: object,
) -> None:
    models = module("models")
    tasks, runs = module("api.tasks"), module("api.runs")
    for name in ("create_task", "list_tasks", "get_task", "update_task", "delete_task"):
        module(f"api.tasks.{name}")
    for name in ("trigger_run", "get_run", "list_runs", "cancel_run"):
        module(f"api.runs.{name}")
    records, events = module("api.records.task_records"), module("api.events.list_events")
    token = auth["Authorization"].removeprefix("Bearer ")
    client = generated.AuthenticatedClient(base_url=served, token=token)
    url = upstream.route("/items", lambda _r: JSONResponse(make_records(3)))

    body = models.TaskIn.from_dict({**http_task(url, name="generated"), "user_id": "u_1"})
    created = await tasks.create_task.asyncio(client=client, body=body)
    assert isinstance(created, models.TaskOut) and created.name == "generated"
    listed = await tasks.list_tasks.asyncio(client=client, user_id="u_1")
    assert [task.id for task in listed.items] == [created.id]
    fetched = await tasks.get_task.asyncio(created.id, client=client)
    assert fetched.source.url == url
    patch = models.TaskPatch.from_dict({"tags": ["wearable"]})
    patched = await tasks.update_task.asyncio(created.id, client=client, body=patch)
    assert patched.tags == ["wearable"]

    trigger = models.TriggerIn.from_dict({})
    run = await runs.trigger_run.asyncio(created.id, client=client, body=trigger)
    assert isinstance(run, models.RunOut)
    deadline = time.monotonic() + 30
    while run.status.value not in ("succeeded", "failed") and time.monotonic() < deadline:
        run = await runs.get_run.asyncio(run.id, client=client)
    assert run.status.value == "succeeded" and run.stats.inserted == 3
    history = await runs.list_runs.asyncio(created.id, client=client)
    assert [item.id for item in history.items] == [run.id]
    finished = await runs.cancel_run.asyncio(run.id, client=client)
    assert isinstance(finished, models.Problem) and finished.status == 409  # typed, not None
    feed = await records.asyncio(created.id, client=client)
    assert [item.key for item in feed.items] == ["r000000", "r000001", "r000002"]
    feed_events = await events.asyncio(client=client)
    assert "run.succeeded" in [event.type_ for event in feed_events.items]

    missing = await tasks.get_task.asyncio("tsk_missing", client=client)
    assert isinstance(missing, models.Problem) and missing.status == 404
    bad = await tasks.create_task.asyncio(
        client=client, body=models.TaskIn.from_dict({**http_task(url), "name": ""})
    )
    assert isinstance(bad, models.Problem) and bad.status == 422 and bad.errors
    anonymous = generated.Client(base_url=served)
    refused = await tasks.list_tasks.asyncio(client=anonymous)
    assert isinstance(refused, models.Problem) and refused.status == 401

    deleted = await tasks.delete_task.asyncio_detailed(created.id, client=client)
    assert deleted.status_code == 204
