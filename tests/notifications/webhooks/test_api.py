"""The `/v1/webhooks` API: secrets shown once, validation as problem+json, isolation."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.notifications.webhooks import service
from tests.fixtures.app import MakeKey, api_client
from tests.notifications.webhooks.conftest import subscribe

URL = "http://127.0.0.1:9/hook"


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


async def test_the_secret_is_shown_at_creation_and_never_again(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/webhooks", json={"url": URL, "events": ["run.failed", "run.failed"]}, headers=auth
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/webhooks/{created['id']}"
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 32
    assert created["events"] == ["run.failed"] and created["disabled"] is False

    shown = (await client.get(f"/v1/webhooks/{created['id']}", headers=auth)).json()
    listed = (await client.get("/v1/webhooks", headers=auth)).json()["items"]
    assert "secret" not in shown and [item["id"] for item in listed] == [created["id"]]
    assert created["secret"] not in str(listed)


async def test_patch_changes_events_and_disables_and_delete_removes(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    hook = await subscribe(client, auth, URL, ["run.failed"])
    path = f"/v1/webhooks/{hook['id']}"
    patched = await client.patch(path, json={"events": ["*"], "disabled": True}, headers=auth)
    assert patched.status_code == 200, patched.text
    assert patched.json()["events"] == ["*"]
    assert (patched.json()["disabled"], patched.json()["disabled_reason"]) == (True, "client")
    enabled = (await client.patch(path, json={"disabled": False}, headers=auth)).json()
    assert (enabled["disabled"], enabled["disabled_reason"]) == (False, None)

    assert (await client.delete(path, headers=auth)).status_code == 204
    _problem(await client.get(path, headers=auth), 404)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"url": URL, "events": ["run.failed", "run.exploded"]}, ["body", "events", 1]),
        ({"url": URL, "events": ["ping"]}, ["body", "events", 0]),
        ({"url": "ftp://example.com/x", "events": ["*"]}, ["body", "url"]),
        ({"url": "not a url", "events": ["*"]}, ["body", "url"]),
        ({"url": URL, "events": []}, ["body", "events"]),
        ({"url": URL}, ["body", "events"]),
        ({"url": URL, "events": ["*"], "secret": "mine"}, ["body", "secret"]),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(
    client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any], loc: list[Any]
) -> None:
    problem = _problem(await client.post("/v1/webhooks", json=body, headers=auth), 422)
    assert [error["loc"] for error in problem["errors"]] == [loc]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/hook", "http://169.254.169.254/latest", "http://[::1]/x"]
)
async def test_urls_the_ssrf_guard_refuses_are_422(
    settings: Settings, make_key: MakeKey, url: str
) -> None:
    guarded = settings.model_copy(update={"block_private_targets": True})
    async with api_client(guarded) as client:
        auth = await make_key("acme")
        created = await client.post(
            "/v1/webhooks", json={"url": url, "events": ["*"]}, headers=auth
        )
        problem = _problem(created, 422)
        assert problem["errors"][0]["loc"] == ["body", "url"]
        assert "refused" in problem["errors"][0]["msg"]


async def test_a_patched_url_passes_the_guard_too(settings: Settings, make_key: MakeKey) -> None:
    guarded = settings.model_copy(update={"block_private_targets": True})
    async with api_client(guarded) as client:
        auth = await make_key("acme")
        hook = await subscribe(client, auth, "http://93.184.215.14/hook", ["*"])
        response = await client.patch(
            f"/v1/webhooks/{hook['id']}", json={"url": "http://10.0.0.1/"}, headers=auth
        )
        assert _problem(response, 422)["errors"][0]["loc"] == ["body", "url"]


async def test_another_tenants_webhook_is_404_everywhere(
    client: httpx.AsyncClient, auth: dict[str, str], make_key: MakeKey
) -> None:
    hook = await subscribe(client, auth, URL, ["*"])
    other = await make_key("globex")
    path = f"/v1/webhooks/{hook['id']}"
    for method, suffix, body in [
        ("GET", "", None),
        ("PATCH", "", {"disabled": True}),
        ("DELETE", "", None),
        ("POST", "/test", None),
        ("POST", "/rotate-secret", {}),
        ("GET", "/deliveries", None),
    ]:
        response = await client.request(method, path + suffix, json=body, headers=other)
        _problem(response, 404)
    assert (await client.get("/v1/webhooks", headers=other)).json()["items"] == []
    assert (await client.get(path, headers=auth)).json()["disabled"] is False


async def test_without_a_key_it_is_401(client: httpx.AsyncClient) -> None:
    _problem(await client.post("/v1/webhooks", json={"url": URL, "events": ["*"]}), 401)
    _problem(await client.get("/v1/webhooks"), 401)


async def test_deliveries_page_newest_first_with_a_cursor(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    hook = await subscribe(client, auth, URL, ["*"])
    pings = [
        (await client.post(f"/v1/webhooks/{hook['id']}/test", headers=auth)).json()["id"]
        for _ in range(3)
    ]
    path = f"/v1/webhooks/{hook['id']}/deliveries"
    first = (await client.get(path, params={"limit": 2}, headers=auth)).json()
    assert [item["id"] for item in first["items"]] == pings[:0:-1]
    assert first["items"][0]["status"] == "pending" and first["items"][0]["attempts"] == 0
    assert first["items"][0]["next_attempt_at"] is not None
    rest = (await client.get(path, params={"cursor": first["next_cursor"]}, headers=auth)).json()
    assert [item["id"] for item in rest["items"]] == pings[:1] and rest["next_cursor"] is None
    _problem(await client.get(path, params={"cursor": "!!"}, headers=auth), 422)
    _problem(await client.get(path, params={"status": "lost"}, headers=auth), 422)


async def test_a_tenant_has_a_bounded_number_of_webhooks(
    client: httpx.AsyncClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_WEBHOOKS", 2)
    for _ in range(2):
        await subscribe(client, auth, URL, ["*"])
    response = await client.post("/v1/webhooks", json={"url": URL, "events": ["*"]}, headers=auth)
    _problem(response, 409)
