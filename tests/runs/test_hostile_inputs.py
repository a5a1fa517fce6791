"""Inputs that used to park or crash runs (issue: hardening): a `Retry-After` of days,
header and credential values no HTTP request can carry, and a run that crashes on
something other than the database or Redis. Real worker, Redis, database, upstream."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from starlette.responses import JSONResponse

from service.config import Settings
from service.db import create_engine
from service.models.types import utcnow
from tests.fixtures.app import api_client
from tests.fixtures.upstream import Upstream, cycling, make_records
from tests.helpers import create_task, http_task, sync, trigger

PATIENT = {
    "max_attempts": 5,
    "backoff": "linear",
    "initial_delay_seconds": 0.05,
    "max_delay_seconds": 60,
}


async def test_a_retry_after_of_days_ends_the_run_saying_until_when(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route(
        "/busy", lambda _r: JSONResponse({}, status_code=429, headers={"Retry-After": "999999"})
    )
    task = await create_task(client, auth, {**http_task(url), "retry": PATIENT})

    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed", run
    assert (run["error"]["code"], run["error"]["retryable"]) == ("upstream_held", False)
    asked_until = (utcnow() + timedelta(seconds=999999)).strftime("%Y-%m-%dT%H")
    assert asked_until in run["error"]["message"]
    assert "60 s" in run["error"]["message"]  # the task's max_delay_seconds is the limit
    assert run["next_attempt_at"] is None
    again = await trigger(client, auth, task["id"])
    assert again["id"] != run["id"]  # the task is not stuck behind a parked run


async def test_a_retry_after_within_the_limits_is_waited_for(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    answers = iter([JSONResponse({}, status_code=429, headers={"Retry-After": "1"})] * 8)
    url = upstream.route("/soon", lambda _r: next(answers, JSONResponse(make_records(2))))
    task = await create_task(client, auth, {**http_task(url), "retry": PATIENT})

    run = await sync(client, auth, task["id"])

    assert run["status"] == "succeeded", run
    assert run["stats"]["inserted"] == 2


@pytest.mark.parametrize(
    ("source", "loc"),
    [
        ({"headers": {"X-Team": "café"}}, ["body", "source", "headers", "X-Team"]),
        ({"headers": {"X-Team": "a\r\nX-Evil: 1"}}, ["body", "source", "headers", "X-Team"]),
        (
            {"auth": {"type": "bearer", "token": "tøken"}},
            ["body", "source", "auth", "bearer", "token"],
        ),
        (
            {"auth": {"type": "header", "name": "X-Key", "value": "ключ"}},
            ["body", "source", "auth", "header", "value"],
        ),
        (
            {"auth": {"type": "basic", "username": "a:b", "password": "p"}},
            ["body", "source", "auth", "basic", "username"],
        ),
    ],
)
@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/tasks:validate"])
async def test_values_no_request_can_carry_are_refused_at_registration(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    source: dict[str, Any],
    loc: list[str],
    path: str,
) -> None:
    body = http_task("https://api.example.com/items", **source)

    response = await client.post(path, json=body, headers=auth)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert loc in [error["loc"] for error in response.json()["errors"]]
    for secret in ("tøken", "ключ"):
        assert secret not in response.text


async def test_a_run_that_crashes_the_same_way_every_time_fails_at_once(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    settings: Settings,
    worker: object,
) -> None:
    """A task stored before its header was refused at the edge: its run crashes in the
    worker. It ends at the first attempt, naming what broke, not after five."""
    url = upstream.route("/ok", lambda _r: JSONResponse(make_records(1)))
    task = await create_task(client, auth, {**http_task(url), "retry": PATIENT})
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as connection:
            source = {**task["source"], "headers": {"X-Team": "caf\u00e9-secret"}}
            await connection.execute(
                text("UPDATE task SET source = :s WHERE id = :id"),
                {"s": json.dumps(source), "id": task["id"]},
            )
    finally:
        await engine.dispose()

    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed", run
    assert run["attempt"] == 1 and len(run["attempts"]) == 1
    assert (run["error"]["code"], run["error"]["retryable"]) == ("internal_error", False)
    assert "ValidationError" in run["error"]["message"]
    assert "secret" not in run["error"]["message"]
    assert upstream.hits("/ok") == []


@pytest.mark.parametrize("cycle", [["a", "b"], ["a", "b", "c"]])
async def test_a_pagination_cycle_of_any_length_fails_the_run_at_once(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    upstream: Upstream,
    worker: object,
    cycle: list[str],
) -> None:
    """a -> b -> a: the second visit is caught before anything of it is stored (it used
    to crash PostgreSQL's batched validator upsert, and SQLite fetched to max_pages)."""
    url = cycling(upstream, "/cycle", cycle)
    body = http_task(
        url,
        params={"p": "a"},
        records_path="data",
        pagination={"type": "next_url", "next_url_path": "next"},
    )
    task = await create_task(client, auth, {**body, "retry": PATIENT})

    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed", run
    assert (run["error"]["code"], run["error"]["retryable"]) == ("pagination_loop", False)
    assert len(upstream.hits("/cycle")) == len(cycle)
    assert run["stats"]["pages"] == len(cycle) - 1  # the page that closes the cycle is not kept


@pytest.mark.parametrize("path", ["/v1/tasks/tsk_x/records", "/v1/events"])
async def test_a_cursor_past_the_largest_seq_is_a_422(
    client: httpx.AsyncClient, auth: dict[str, str], path: str
) -> None:
    response = await client.get(path, params={"after": 2**63}, headers=auth)

    assert response.status_code == 422, response.text
    assert ["query", "after"] in [error["loc"] for error in response.json()["errors"]]


async def test_a_task_whose_credentials_no_longer_decrypt_can_be_paused_or_given_new_ones(
    auth: dict[str, str], settings: Settings
) -> None:
    body = http_task(
        "https://api.example.com/items", auth={"type": "bearer", "token": "old-token-123456"}
    )
    async with api_client(settings) as before:
        task = await create_task(before, auth, body)
    rotated = settings.model_copy(update={"secret_keys": [Fernet.generate_key().decode()]})
    async with api_client(rotated) as client:  # the old key is gone from the server
        path = f"/v1/tasks/{task['id']}"

        tagged = await client.patch(path, json={"tags": ["x"]}, headers=auth)
        assert tagged.status_code == 409, tagged.text
        assert tagged.json()["type"] == "urn:backsync:problem:credentials-unreadable"
        masked = {"source": {"auth": {"type": "bearer", "token": "****3456"}}}
        assert (await client.patch(path, json=masked, headers=auth)).status_code == 409
        odd = {"source": {"auth": {"type": [1]}}}
        assert (await client.patch(path, json=odd, headers=auth)).status_code == 409
        upsert = await client.post(
            "/v1/tasks?on_conflict=update",
            json=http_task("https://api.example.com/items"),
            headers=auth,
        )
        assert upsert.status_code == 409, upsert.text

        paused = await client.patch(path, json={"paused": True}, headers=auth)
        assert (paused.status_code, paused.json()["state"]) == (200, "paused")

        fresh = {"source": {"auth": {"type": "bearer", "token": "new-token-654321"}}}
        replaced = await client.patch(path, json=fresh, headers=auth)
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["source"]["auth"] == {"type": "bearer", "token": "****4321"}
        assert (await client.patch(path, json={"tags": ["x"]}, headers=auth)).status_code == 200


async def test_a_next_link_that_is_not_a_url_is_refused_not_a_crash(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream, worker: object
) -> None:
    url = upstream.route(
        "/bad-next", lambda _r: JSONResponse({"data": [{"id": "a"}], "next": "http://[::1/p"})
    )
    body = http_task(
        url, records_path="data", pagination={"type": "next_url", "next_url_path": "next"}
    )
    task = await create_task(client, auth, {**body, "retry": PATIENT})

    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "target_refused", run["error"]
