"""Authentication: `Authorization: Bearer bks_<prefix>_<secret>`, keys stored hashed (SPEC §2)."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from sqlalchemy import text

from service.cli import _create_key, _revoke_key
from service.config import Settings
from service.db import create_engine
from tests.fixtures.app import MakeKey


def assert_unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    problem = response.json()
    assert problem["status"] == 401
    assert problem["type"] == "urn:backsync:problem:unauthenticated"
    assert problem["title"]
    assert problem["detail"]


async def test_a_valid_key_is_accepted(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.get("/v1/tasks", headers=auth)
    assert response.status_code == 200, response.text


async def test_the_scheme_is_case_insensitive(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    key = auth["Authorization"].removeprefix("Bearer ")
    response = await client.get("/v1/tasks", headers={"Authorization": f"bearer {key}"})
    assert response.status_code == 200, response.text


async def test_no_header_is_401(client: httpx.AsyncClient) -> None:
    assert_unauthenticated(await client.get("/v1/tasks"))


BAD_HEADERS = [
    "",
    "Bearer",
    "Bearer ",
    "Basic YWxpY2U6c2VjcmV0",
    "Token {key}",
    "{key}",
    "Bearer bks_",
    "Bearer bks__secret",
    "Bearer bks_prefixonly",
    "Bearer bks_prefix_",
    "Bearer sk_abc_def",
    "Bearer {key}x",
    "Bearer {key_no_secret}",
    "Bearer bks_unknownprefix_c2VjcmV0c2VjcmV0c2VjcmV0",
    "Bearer bks_" + "p" * 500 + "_secret",
]


async def test_bad_credentials_are_401(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    key = auth["Authorization"].removeprefix("Bearer ")
    for header in BAD_HEADERS:
        value = header.format(key=key, key_no_secret=key.rsplit("_", 1)[0] + "_wrongsecret")
        assert_unauthenticated(await client.get("/v1/tasks", headers={"Authorization": value}))


async def test_every_v1_route_needs_a_key(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("POST", "/v1/tasks"),
        ("GET", "/v1/tasks"),
        ("GET", "/v1/tasks/tsk_x"),
        ("PATCH", "/v1/tasks/tsk_x"),
        ("DELETE", "/v1/tasks/tsk_x"),
        ("POST", "/v1/tasks/tsk_x/runs"),
        ("GET", "/v1/tasks/tsk_x/runs"),
        ("GET", "/v1/runs/run_x"),
        ("POST", "/v1/runs/run_x/cancel"),
        ("GET", "/v1/tasks/tsk_x/records"),
    ]:
        body: dict[str, object] | None = {} if method in ("POST", "PATCH") else None
        response = await client.request(method, path, json=body)
        assert_unauthenticated(response)


async def test_a_revoked_key_is_refused(
    client: httpx.AsyncClient, settings: Settings, make_key: MakeKey
) -> None:
    headers = await make_key("acme")
    other = await make_key("acme")
    assert (await client.get("/v1/tasks", headers=headers)).status_code == 200
    prefix = headers["Authorization"].removeprefix("Bearer bks_").split("_")[0]

    assert await _revoke_key(settings, prefix)

    assert_unauthenticated(await client.get("/v1/tasks", headers=headers))
    assert (await client.get("/v1/tasks", headers=other)).status_code == 200
    assert not await _revoke_key(settings, "nosuchprefix")


async def test_revoking_by_the_full_bks_prefix_works_too(
    client: httpx.AsyncClient, settings: Settings, make_key: MakeKey
) -> None:
    headers = await make_key("acme")
    prefix = headers["Authorization"].removeprefix("Bearer bks_").split("_")[0]
    assert await _revoke_key(settings, f"bks_{prefix}")
    assert_unauthenticated(await client.get("/v1/tasks", headers=headers))


async def test_revoking_by_the_whole_key_works_and_a_wrong_secret_revokes_nothing(
    client: httpx.AsyncClient, settings: Settings, make_key: MakeKey
) -> None:
    """A leaked key is usually pasted whole; a mistyped one must not revoke its neighbour."""
    headers = await make_key("acme")
    key = headers["Authorization"].removeprefix("Bearer ")

    assert not await _revoke_key(settings, key[:-1] + ("A" if key[-1] != "A" else "B"))
    assert (await client.get("/v1/tasks", headers=headers)).status_code == 200
    assert await _revoke_key(settings, key)
    assert_unauthenticated(await client.get("/v1/tasks", headers=headers))


async def test_keys_are_stored_hashed(settings: Settings, make_key: MakeKey) -> None:
    keys = [
        (await make_key(tenant))["Authorization"].removeprefix("Bearer ")
        for tenant in ("acme", "globex")
    ]
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT * FROM api_key"))).mappings().all()
    finally:
        await engine.dispose()

    assert len(rows) == 2
    dumped = repr([dict(row) for row in rows])
    for key in keys:
        secret = key.split("_", 2)[2]
        assert key not in dumped
        assert secret not in dumped
        assert hashlib.sha256(key.encode()).hexdigest() in dumped


async def test_a_given_key_must_look_like_a_key(settings: Settings) -> None:
    with pytest.raises(ValueError, match="bks_"):
        await _create_key(settings, "acme", "not-a-key")
