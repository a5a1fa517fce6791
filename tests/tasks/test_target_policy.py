"""SSRF guard at registration (422) and at fetch time (a non-retryable run error)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from service.config import Settings
from tests.fixtures.app import api_client
from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, sync


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings.model_copy(update={"block_private_targets": True})) as http:
        yield http


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost:9/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://100.64.0.1/x",
        "http://0.0.0.0/x",
    ],
)
async def test_private_targets_are_refused_at_registration(
    guarded: httpx.AsyncClient, auth: dict[str, str], url: str
) -> None:
    response = await guarded.post("/v1/tasks", json=http_task(url), headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "source", "url"]


async def test_allow_listed_targets_are_accepted(
    settings: Settings, auth: dict[str, str], upstream: Upstream
) -> None:
    allowing = settings.model_copy(
        update={"block_private_targets": True, "allowed_targets": ["127.0.0.1/32"]}
    )
    async with api_client(allowing) as http:
        response = await http.post(
            "/v1/tasks", json=http_task(upstream.base_url + "/ok"), headers=auth
        )
    assert response.status_code == 201


async def test_a_refused_target_fails_the_run_without_retrying(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, spawn_worker: object
) -> None:
    """Registered while private targets were allowed; the worker's policy now refuses it."""
    task = await create_task(
        client, auth, {**http_task("http://127.0.0.1:9/x"), "retry": {"max_attempts": 5}}
    )
    spawn_worker(block_private_targets="true")  # type: ignore[operator]

    run = await sync(client, auth, task["id"])

    assert run["status"] == "failed"
    assert run["error"]["code"] == "target_refused"
    assert run["error"]["retryable"] is False
    assert run["attempt"] == 1
