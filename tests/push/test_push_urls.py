"""Managing push URLs: shown once, listed without tokens, revoked, tenant-isolated, gone
with their task."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from service.config import Settings
from service.db import create_engine, create_sessionmaker
from service.models import PushUrl
from tests.fixtures.app import MakeKey
from tests.helpers import create_task, http_task
from tests.push.helpers import make_push_url, push_path

URL = "https://api.example.com/items"


async def test_a_new_push_url_is_absolute_shown_once_and_stored_only_as_a_hash(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    task = await create_task(client, auth, http_task(URL))
    created = await make_push_url(client, auth, task["id"])

    assert created["url"] == f"http://backsync/v1/push/{created['token']}"
    assert created["token"].startswith("bkp_") and len(created["token"]) >= 40
    assert (created["task_id"], created["call_count"], created["last_called_at"]) == (
        task["id"],
        0,
        None,
    )
    assert created["response_status"] == 202
    path = f"/v1/tasks/{task['id']}/push-urls/{created['id']}"
    listed = await client.get(f"/v1/tasks/{task['id']}/push-urls", headers=auth)
    assert [item["id"] for item in listed.json()["items"]] == [created["id"]]
    shown = (await client.get(path, headers=auth)).json()
    for body in (listed.text, str(shown)):
        assert created["token"] not in body and "token" not in body
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            row = (await session.scalars(select(PushUrl))).one()
    finally:
        await engine.dispose()
    assert created["token"] not in str(row.model_dump())
    assert len(row.token_hash) == 64


async def test_two_push_urls_of_one_task_have_different_tokens(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, http_task(URL))
    first = await make_push_url(client, auth, task["id"])
    second = await make_push_url(client, auth, task["id"])
    assert first["token"] != second["token"]
    listed = await client.get(f"/v1/tasks/{task['id']}/push-urls", headers=auth)
    assert [item["id"] for item in listed.json()["items"]] == [second["id"], first["id"]]


async def test_a_revoked_push_url_answers_404_like_one_never_made(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, http_task(URL))
    created = await make_push_url(client, auth, task["id"])
    path = push_path(created)
    assert (await client.get(path)).status_code == 200

    revoked = await client.delete(f"/v1/tasks/{task['id']}/push-urls/{created['id']}", headers=auth)
    assert revoked.status_code == 204
    gone = await client.post(path)
    never = await client.post("/v1/push/bkp_" + "x" * 43)
    assert gone.status_code == never.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert gone.json() == never.json()
    assert (await client.get(path, params={"challenge": "c"})).status_code == 404
    assert (await client.head(path)).status_code == 404
    listed = await client.get(f"/v1/tasks/{task['id']}/push-urls", headers=auth)
    assert listed.json()["items"] == []
    again = await client.delete(f"/v1/tasks/{task['id']}/push-urls/{created['id']}", headers=auth)
    assert again.status_code == 404


async def test_deleting_the_task_removes_its_push_urls(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, http_task(URL))
    path = push_path(await make_push_url(client, auth, task["id"]))
    assert (await client.delete(f"/v1/tasks/{task['id']}", headers=auth)).status_code == 204
    assert (await client.post(path)).status_code == 404


async def test_another_tenants_push_urls_are_404_everywhere(
    client: httpx.AsyncClient, auth: dict[str, str], make_key: MakeKey
) -> None:
    other = await make_key("globex")
    task = await create_task(client, auth, http_task(URL))
    created = await make_push_url(client, auth, task["id"])
    mine = f"/v1/tasks/{task['id']}/push-urls"
    one = f"{mine}/{created['id']}"
    for method, path in [
        ("POST", mine),
        ("GET", mine),
        ("GET", one),
        ("PATCH", one),
        ("DELETE", one),
    ]:
        response = await client.request(method, path, json={}, headers=other)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    theirs = await create_task(client, other, http_task(URL, name="theirs"))
    crossed = f"/v1/tasks/{theirs['id']}/push-urls/{created['id']}"
    assert (await client.delete(crossed, headers=other)).status_code == 404
    listed = await client.get(mine, headers=auth)
    assert [item["id"] for item in listed.json()["items"]] == [created["id"]]


async def test_managing_push_urls_needs_an_api_key_but_calling_one_does_not(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, http_task(URL))
    unauthenticated = await client.post(f"/v1/tasks/{task['id']}/push-urls")
    assert unauthenticated.status_code == 401
    created = await make_push_url(client, auth, task["id"])
    assert (await client.post(push_path(created))).status_code == 202


async def test_patch_sets_and_clears_the_verification_code_and_the_answer(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, http_task(URL))
    created = await make_push_url(client, auth, task["id"])
    one = f"/v1/tasks/{task['id']}/push-urls/{created['id']}"

    patched = await client.patch(
        one, json={"verification_code": "abc123", "response_status": 204}, headers=auth
    )
    assert patched.status_code == 200
    assert (patched.json()["has_verification_code"], patched.json()["response_status"]) == (
        True,
        204,
    )
    cleared = await client.patch(one, json={"verification_code": None}, headers=auth)
    assert cleared.json()["has_verification_code"] is False
    assert cleared.json()["response_status"] == 204
    bad = await client.patch(one, json={"response_status": 201}, headers=auth)
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
