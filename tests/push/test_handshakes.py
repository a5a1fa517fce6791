"""The subscription checks providers make before they send notifications."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import create_task, http_task
from tests.push.helpers import make_push_url, push_path

URL = "https://api.example.com/items"


@pytest.fixture
async def task_id(client: httpx.AsyncClient, auth: dict[str, str]) -> str:
    task = await create_task(client, auth, http_task(URL))
    return str(task["id"])


async def test_strava_hub_challenge_is_echoed_as_json_when_the_verify_token_matches(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str
) -> None:
    path = push_path(await make_push_url(client, auth, task_id, verification_code="STRAVA"))
    params = {"hub.mode": "subscribe", "hub.challenge": "15f7d1a91c1f40", "hub.verify_token": ""}
    good = await client.get(path, params={**params, "hub.verify_token": "STRAVA"})
    assert good.status_code == 200
    assert good.headers["content-type"] == "application/json"
    assert good.json() == {"hub.challenge": "15f7d1a91c1f40"}
    wrong = await client.get(path, params={**params, "hub.verify_token": "other"})
    assert wrong.status_code == 404
    assert wrong.headers["content-type"] == "application/problem+json"


async def test_without_a_verification_code_any_challenge_is_echoed(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str
) -> None:
    path = push_path(await make_push_url(client, auth, task_id))
    hub = await client.get(path, params={"hub.challenge": "abc", "hub.verify_token": "x"})
    assert hub.json() == {"hub.challenge": "abc"}
    plain = await client.get(path, params={"challenge": "xyz"})
    assert plain.json() == {"challenge": "xyz"}
    live = await client.get(path)
    assert (live.status_code, live.json()) == (200, {})


async def test_oura_challenge_with_verification_token(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str
) -> None:
    path = push_path(await make_push_url(client, auth, task_id, verification_code="oura-vt"))
    good = await client.get(path, params={"verification_token": "oura-vt", "challenge": "c1"})
    assert (good.status_code, good.json()) == (200, {"challenge": "c1"})
    assert (await client.get(path, params={"challenge": "c1"})).status_code == 404
    bad = await client.get(path, params={"verification_token": "nope", "challenge": "c1"})
    assert bad.status_code == 404


async def test_fitbit_verify_is_204_for_the_code_and_404_for_any_other(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str
) -> None:
    created = await make_push_url(client, auth, task_id, response_status=204)
    path = push_path(created)
    # Without the code configured yet, Fitbit's check cannot pass.
    assert (await client.get(path, params={"verify": "f1tb1tc0de"})).status_code == 404
    patched = await client.patch(
        f"/v1/tasks/{task_id}/push-urls/{created['id']}",
        json={"verification_code": "f1tb1tc0de"},
        headers=auth,
    )
    assert patched.status_code == 200
    right = await client.get(path, params={"verify": "f1tb1tc0de"})
    assert (right.status_code, right.content) == (204, b"")
    wrong = await client.get(path, params={"verify": "intentionally-wrong"})
    assert wrong.status_code == 404


async def test_withings_head_check_and_handshakes_start_no_run(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: str
) -> None:
    path = push_path(await make_push_url(client, auth, task_id))
    head = await client.head(path)
    assert head.status_code == 200
    await client.get(path, params={"challenge": "c"})
    runs = await client.get(f"/v1/tasks/{task_id}/runs", headers=auth)
    assert runs.json()["items"] == []
    listed = await client.get(f"/v1/tasks/{task_id}/push-urls", headers=auth)
    assert listed.json()["items"][0]["call_count"] == 0


async def test_a_wrong_token_is_404_for_every_method(client: httpx.AsyncClient) -> None:
    for method in ("GET", "POST", "PUT", "HEAD"):
        response = await client.request(method, "/v1/push/bkp_wrong")
        assert response.status_code == 404, method
    challenged = await client.get("/v1/push/bkp_wrong", params={"hub.challenge": "x"})
    assert challenged.status_code == 404
    assert "x" not in challenged.json().get("detail", "")
