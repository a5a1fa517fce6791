"""POST /v1/tasks: shape, credentials sealed and masked, on_conflict, validation (SPEC §3)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.crypto import SecretBox
from tests.helpers import create_task, http_task
from tests.tasks.conftest import TaskRow

URL = "https://api.example.com/v2/daily_activity"
PROBLEM = "application/problem+json"

# Each auth type, its secret field and a secret long enough to show its last 4 chars.
AUTHS: list[tuple[dict[str, Any], str, str]] = [
    ({"type": "bearer", "token": "tok-SECRET-bearer-9a8b"}, "token", "tok-SECRET-bearer-9a8b"),
    (
        {"type": "header", "name": "X-Api-Key", "value": "hdr-SECRET-value-1c2d"},
        "value",
        "hdr-SECRET-value-1c2d",
    ),
    (
        {"type": "query", "name": "api_key", "value": "qry-SECRET-value-3e4f"},
        "value",
        "qry-SECRET-value-3e4f",
    ),
    (
        {"type": "basic", "username": "alice", "password": "pwd-SECRET-basic-5g6h"},
        "password",
        "pwd-SECRET-basic-5g6h",
    ),
]


def errors_at(response: httpx.Response) -> list[list[str | int]]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == 422
    assert body["type"]
    assert body["title"]
    return [error["loc"] for error in body["errors"]]


async def test_create_returns_201_with_location_and_the_full_shape(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = http_task(URL, name="daily", records_path="data")
    body.update(user_id="u_42", tags=["wearable", "oura"], schedule={"every_seconds": 3600})

    response = await client.post("/v1/tasks", json=body, headers=auth)

    assert response.status_code == 201, response.text
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["id"].startswith("tsk_")
    assert task["name"] == "daily"
    assert task["user_id"] == "u_42"
    assert task["kind"] == "http"
    assert task["state"] == "active"
    assert task["paused"] is False
    assert task["last_run"] is None
    assert task["last_success_at"] is None
    assert task["watermark"] is None
    assert task["consecutive_failures"] == 0
    assert task["tags"] == ["wearable", "oura"]
    assert task["schedule"] == {"every_seconds": 3600, "jitter_seconds": 0, "timezone": "UTC"}
    assert task["source"]["url"] == URL
    assert task["source"]["records_path"] == "data"
    assert task["source"]["auth"] == {"type": "none"}
    assert task["source"]["pagination"] == {"type": "none"}
    assert task["retry"] == {
        "max_attempts": 5,
        "backoff": "exponential",
        "initial_delay_seconds": 10,
        "max_delay_seconds": 3600,
    }
    assert task["limits"]["timeout_seconds"] == 30
    assert task["limits"]["max_pages"] == 10000
    fetched = await client.get(response.headers["location"], headers=auth)
    assert fetched.status_code == 200
    assert fetched.json() == task


async def test_created_paused_shows_state_paused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(client, auth, {**http_task(URL), "paused": True})
    assert task["state"] == "paused"
    assert task["paused"] is True


@pytest.mark.parametrize(
    ("auth_config", "field", "secret"), AUTHS, ids=[a[0]["type"] for a in AUTHS]
)
async def test_every_auth_type_is_masked_everywhere_and_stored_encrypted(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    settings: Settings,
    task_row: TaskRow,
    auth_config: dict[str, Any],
    field: str,
    secret: str,
) -> None:
    masked = "****" + secret[-4:]
    created = await client.post("/v1/tasks", json=http_task(URL, auth=auth_config), headers=auth)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    fetched = await client.get(f"/v1/tasks/{task_id}", headers=auth)
    listed = await client.get("/v1/tasks", headers=auth)
    patched = await client.patch(f"/v1/tasks/{task_id}", json={"tags": ["x"]}, headers=auth)

    assert fetched.status_code == 200, fetched.text
    assert patched.status_code == 200, patched.text
    for response in (created, fetched, patched):
        shown = response.json()["source"]["auth"]
        assert shown == {**auth_config, field: masked}
        assert secret not in response.text
    assert listed.json()["items"][0]["source"]["auth"][field] == masked
    assert secret not in listed.text

    row = await task_row(task_id)
    assert all(secret not in str(value) for value in row.values()), row
    assert SecretBox(settings.secret_keys).decrypt_json(row["auth_ciphertext"]) == auth_config


async def test_no_auth_stores_no_ciphertext(
    client: httpx.AsyncClient, auth: dict[str, str], task_row: TaskRow
) -> None:
    task = await create_task(client, auth, http_task(URL))
    assert (await task_row(task["id"]))["auth_ciphertext"] is None


# ---- on_conflict ---------------------------------------------------------------------


def full_task(name: str = "dup") -> dict[str, Any]:
    return {
        "name": name,
        "user_id": "u_1",
        "source": {
            "url": URL,
            "headers": {"Accept": "application/json"},
            "params": {"start_date": "2026-01-01", "units": "metric"},
            "auth": {"type": "bearer", "token": "first-token-abcd1234"},
            "records_path": "data",
            "primary_key": "id",
            "pagination": {"type": "cursor", "cursor_path": "next", "cursor_param": "next"},
        },
        "schedule": {"every_seconds": 3600},
        "retry": {"max_attempts": 3},
        "tags": ["a", "b"],
    }


async def test_on_conflict_fail_is_the_default_and_answers_409(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    first = await create_task(client, auth, full_task())

    for params in ({}, {"on_conflict": "fail"}):
        response = await client.post("/v1/tasks", json=full_task(), params=params, headers=auth)
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["status"] == 409
        assert problem["title"] == "Conflict"
        assert first["id"] in problem["detail"]
    assert len((await client.get("/v1/tasks", headers=auth)).json()["items"]) == 1


async def test_on_conflict_keep_returns_the_existing_task_unchanged(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, task_row: TaskRow
) -> None:
    first = await create_task(client, auth, full_task())
    other = {**full_task(), "user_id": "u_2", "tags": ["z"]}
    other["source"] = {
        **other["source"],
        "auth": {"type": "bearer", "token": "second-token-zzzz9999"},
    }

    response = await client.post(
        "/v1/tasks", json=other, params={"on_conflict": "keep"}, headers=auth
    )

    assert response.status_code == 200, response.text
    assert response.headers["location"] == f"/v1/tasks/{first['id']}"
    assert response.json() == first
    secret = SecretBox(settings.secret_keys).decrypt_json(
        (await task_row(first["id"]))["auth_ciphertext"]
    )
    assert secret["token"] == "first-token-abcd1234"


async def test_on_conflict_replace_resets_fields_not_given_to_defaults(
    client: httpx.AsyncClient, auth: dict[str, str], task_row: TaskRow
) -> None:
    first = await create_task(client, auth, full_task())
    replacement = {
        "name": "dup",
        "source": {"url": "https://api.example.com/v3/other", "primary_key": "uid"},
    }

    response = await client.post(
        "/v1/tasks", json=replacement, params={"on_conflict": "replace"}, headers=auth
    )

    assert response.status_code == 200, response.text
    task = response.json()
    assert task["id"] == first["id"]
    assert task["source"]["url"] == "https://api.example.com/v3/other"
    assert task["source"]["primary_key"] == "uid"
    assert task["source"]["params"] == {}
    assert task["source"]["headers"] == {}
    assert task["source"]["auth"] == {"type": "none"}
    assert task["source"]["pagination"] == {"type": "none"}
    assert task["user_id"] is None
    assert task["schedule"] is None
    assert task["tags"] == []
    assert task["retry"]["max_attempts"] == 5
    assert (await task_row(first["id"]))["auth_ciphertext"] is None
    assert (await client.get("/v1/tasks", params={"tag": "a"}, headers=auth)).json()["items"] == []


async def test_on_conflict_update_merges_into_the_existing_task(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, task_row: TaskRow
) -> None:
    first = await create_task(client, auth, full_task())
    change = {
        "name": "dup",
        "source": {"url": URL, "primary_key": "id", "params": {"units": "imperial"}},
        "tags": ["c"],
    }

    response = await client.post(
        "/v1/tasks", json=change, params={"on_conflict": "update"}, headers=auth
    )

    assert response.status_code == 200, response.text
    task = response.json()
    assert task["id"] == first["id"]
    assert task["source"]["params"] == {"start_date": "2026-01-01", "units": "imperial"}
    assert task["source"]["headers"] == {"Accept": "application/json"}
    assert task["source"]["pagination"] == first["source"]["pagination"]
    assert task["source"]["auth"] == {"type": "bearer", "token": "****1234"}
    assert task["user_id"] == "u_1"
    assert task["schedule"] == first["schedule"]
    assert task["retry"]["max_attempts"] == 3
    assert task["tags"] == ["c"]
    secret = SecretBox(settings.secret_keys).decrypt_json(
        (await task_row(first["id"]))["auth_ciphertext"]
    )
    assert secret == {"type": "bearer", "token": "first-token-abcd1234"}


async def test_on_conflict_rejects_unknown_values(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/tasks", json=http_task(URL), params={"on_conflict": "merge"}, headers=auth
    )
    assert errors_at(response) == [["query", "on_conflict"]]


# ---- source: pagination, keys, headers, URL ------------------------------------------

PAGINATIONS: list[dict[str, Any]] = [
    {"type": "none"},
    {"type": "page_number", "page_param": "page", "start": 1, "size_param": "per_page", "size": 50},
    {"type": "page_number", "total_pages_path": "meta.total_pages"},
    {
        "type": "offset",
        "offset_param": "offset",
        "limit_param": "limit",
        "limit": 100,
        "total_path": "total",
    },
    {"type": "offset", "has_more_path": "has_more"},
    {"type": "cursor", "cursor_path": "meta.next_token", "cursor_param": "next_token"},
    {"type": "next_url", "next_url_path": "links.next"},
    {"type": "link_header"},
]


@pytest.mark.parametrize("pagination", PAGINATIONS, ids=lambda p: str(p["type"]))
async def test_every_pagination_type_is_accepted(
    client: httpx.AsyncClient, auth: dict[str, str], pagination: dict[str, Any]
) -> None:
    task = await create_task(client, auth, http_task(URL, pagination=pagination))
    shown = task["source"]["pagination"]
    assert {name: shown[name] for name in pagination} == pagination


BAD_PAGINATIONS: list[tuple[dict[str, Any], list[str | int]]] = [
    ({"type": "cursor", "cursor_param": "next"}, ["cursor", "cursor_path"]),
    ({"type": "cursor", "cursor_path": "next"}, ["cursor", "cursor_param"]),
    ({"type": "cursor", "cursor_path": "a..b", "cursor_param": "next"}, ["cursor", "cursor_path"]),
    ({"type": "next_url"}, ["next_url", "next_url_path"]),
    ({"type": "page_number", "size": 0}, ["page_number", "size"]),
    ({"type": "page_number", "start": -1}, ["page_number", "start"]),
    ({"type": "offset", "limit": 0}, ["offset", "limit"]),
    ({"type": "offset", "total_path": "has space"}, ["offset", "total_path"]),
    ({"type": "link_header", "rel": "next"}, ["link_header", "rel"]),
    ({"type": "scroll"}, []),
    ({}, []),
]


async def test_bad_pagination_is_refused_at_the_field(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for pagination, where in BAD_PAGINATIONS:
        response = await client.post(
            "/v1/tasks", json=http_task(URL, pagination=pagination), headers=auth
        )
        assert ["body", "source", "pagination", *where] in errors_at(response), pagination


async def test_compound_primary_key_is_accepted(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    task = await create_task(
        client, auth, {**http_task(URL), "source": {"url": URL, "primary_key": ["user.id", "day"]}}
    )
    assert task["source"]["primary_key"] == ["user.id", "day"]


async def test_bad_or_missing_primary_keys_are_refused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for primary_key in ([], "", "a..b", ["ok", ""], None, ["k"] * 11):
        body = {"name": "t", "source": {"url": URL, "primary_key": primary_key}}
        locs = errors_at(await client.post("/v1/tasks", json=body, headers=auth))
        assert locs, primary_key
        assert all(loc[:3] == ["body", "source", "primary_key"] for loc in locs), primary_key
    response = await client.post(
        "/v1/tasks", json={"name": "t", "source": {"url": URL}}, headers=auth
    )
    assert errors_at(response) == [["body", "source", "primary_key"]]


async def test_credentials_in_headers_are_refused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for header in ("Authorization", "authorization", "Proxy-Authorization"):
        body = http_task(
            URL, headers={"Accept": "application/json", header: "Bearer hdr-secret-9999"}
        )
        response = await client.post("/v1/tasks", json=body, headers=auth)
        assert errors_at(response) == [["body", "source", "headers"]], header
        assert "hdr-secret-9999" not in response.text


async def test_userinfo_in_the_url_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/tasks", json=http_task("https://bob:pw-secret-7777@api.example.com/x"), headers=auth
    )
    assert errors_at(response) == [["body", "source", "url"]]
    assert "pw-secret-7777" not in response.text


async def test_non_http_urls_are_refused(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for url in (
        "ftp://api.example.com/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "api.example.com/x",
        "",
        "ws://x.example.com",
    ):
        response = await client.post("/v1/tasks", json=http_task(url), headers=auth)
        assert errors_at(response) == [["body", "source", "url"]], url


# ---- schedule and the rest -----------------------------------------------------------


async def test_schedule_below_the_minimum_interval_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for every in (1, 59):
        response = await client.post(
            "/v1/tasks", json={**http_task(URL), "schedule": {"every_seconds": every}}, headers=auth
        )
        assert errors_at(response) == [["body", "schedule", "every_seconds"]], every
        assert "60" in response.json()["errors"][0]["msg"]


async def test_schedule_at_the_minimum_interval_and_cron_are_accepted(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    every = await create_task(
        client,
        auth,
        {**http_task(URL, name="a"), "schedule": {"every_seconds": 60, "jitter_seconds": 5}},
    )
    cron = await create_task(
        client,
        auth,
        {
            **http_task(URL, name="b"),
            "schedule": {"cron": "0 6 * * *", "timezone": "Europe/Berlin"},
        },
    )
    assert every["schedule"]["every_seconds"] == 60
    assert cron["schedule"] == {
        "cron": "0 6 * * *",
        "timezone": "Europe/Berlin",
        "jitter_seconds": 0,
    }


async def test_unknown_timezone_is_refused(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for zone in ("Mars/Olympus_Mons", "../../etc/passwd", "", "UTC\u0000"):
        body = {**http_task(URL), "schedule": {"cron": "0 6 * * *", "timezone": zone}}
        locs = errors_at(await client.post("/v1/tasks", json=body, headers=auth))
        assert locs == [["body", "schedule", "timezone"]], zone


async def test_bad_schedules_are_refused(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for schedule in (
        {},
        {"every_seconds": 3600, "cron": "0 6 * * *"},
        {"cron": "0 6 * *"},
        {"every_seconds": 0},
        {"every_seconds": 3600, "jitter_seconds": -1},
        {"every_seconds": 3600, "at": "noon"},
    ):
        response = await client.post(
            "/v1/tasks", json={**http_task(URL), "schedule": schedule}, headers=auth
        )
        locs = errors_at(response)
        assert locs, schedule
        assert all(loc[:2] == ["body", "schedule"] for loc in locs), schedule


async def test_other_invalid_fields_are_refused_at_the_field(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    cases: list[tuple[dict[str, Any], list[str | int]]] = [
        ({"name": ""}, ["body", "name"]),
        ({"name": "has space"}, ["body", "name"]),
        ({"kind": "ftp"}, ["body", "kind"]),
        ({"tags": ["ok", "not ok"]}, ["body", "tags", 1]),
        ({"retry": {"backoff": "fibonacci"}}, ["body", "retry", "backoff"]),
        ({"limits": {"timeout_seconds": 0}}, ["body", "limits", "timeout_seconds"]),
        ({"surprise": True}, ["body", "surprise"]),
    ]
    for change, where in cases:
        response = await client.post("/v1/tasks", json={**http_task(URL), **change}, headers=auth)
        assert where in errors_at(response), change


def raw_task(**change: str) -> bytes:
    """A task as JSON text, with `"PLACEHOLDER"` strings swapped for raw JSON (NaN, \\ud800…)."""
    mapping: dict[str, Any] = {
        "type": "steps",
        "value_path": "s",
        "unit": "count",
        "start_path": "t",
    }
    mapping |= {"id_path": "id", "metadata": {"h": "H"}}  # kept as given: any JSON
    text = json.dumps(
        http_task(URL, params={"p": "P"}, records_path="data")
        | {"user_id": "u_42", "health_mapping": mapping}
    )
    for placeholder, raw in change.items():
        text = text.replace(f'"{placeholder}"', raw)
    return text.encode()


async def test_values_the_database_cannot_hold_are_refused(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """Python's JSON parser and lax validation let these through; storing them was a 500."""
    for content, where in [
        (raw_task(P="NaN"), ["body", "source", "params", "p"]),
        (raw_task(P="-Infinity"), ["body", "source", "params", "p"]),
        (raw_task(H="1e999"), ["body", "health_mapping", "metadata", "h"]),
        (raw_task(P=str(2**63)), ["body", "source", "params", "p"]),
        (raw_task(H=str(-(2**63) - 1)), ["body", "health_mapping", "metadata", "h"]),
        (raw_task(H="[" * 40 + "]" * 40), ["body", "health_mapping", "metadata", "h", *[0] * 30]),
        (raw_task(P='"a\\u0000b"'), ["body", "source", "params", "p"]),
        (raw_task(H='"\\udc00"'), ["body", "health_mapping", "metadata", "h"]),
        (raw_task(H='{"\\u0000": 1}'), ["body", "health_mapping", "metadata", "h"]),
    ]:
        response = await client.post(
            "/v1/tasks", content=content, headers={**auth, "Content-Type": "application/json"}
        )
        assert errors_at(response) == [where], content[:200]
    assert (await client.get("/v1/tasks", headers=auth)).json()["items"] == []


async def test_the_largest_64_bit_values_are_fine(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    content = raw_task(P=str(2**63 - 1), H=str(-(2**63)))
    response = await client.post(
        "/v1/tasks", content=content, headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
    task = (await client.get(response.headers["location"], headers=auth)).json()
    assert task["source"]["params"]["p"] == 2**63 - 1
    assert task["health_mapping"]["metadata"]["h"] == -(2**63)


@pytest.mark.parametrize(
    "headers",
    [{"X Bad": "v"}, {"X-Inject": "a\r\nX-Other: 1"}, {"X-Nul": "a\x00b"}, {"": "v"}],
)
async def test_header_names_and_values_that_could_split_a_request_are_refused(
    client: httpx.AsyncClient, auth: dict[str, str], headers: dict[str, str]
) -> None:
    body = http_task("https://api.example.com/x", headers=headers)
    response = await client.post("/v1/tasks", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"][:3] == ["body", "source", "headers"]
