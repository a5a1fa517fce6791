"""Keys held by another process: in flight (409), abandoned (taken over), and purging."""

from __future__ import annotations

from datetime import timedelta

import httpx

from service.db import SessionMaker
from service.idempotency import service
from service.idempotency.service import Claim, KeyedRequest
from service.models.types import utcnow
from tests.fixtures.app import MakeKey
from tests.helpers import http_task
from tests.idempotency.conftest import backdate, sql, tenant_id

URL = "https://api.example.com/items"


async def hold(sessionmaker: SessionMaker, body: bytes) -> Claim:
    """Claim `k` on POST /v1/tasks as another API process would, mid-request."""
    request = KeyedRequest.of(await tenant_id(sessionmaker), "k", "POST", "/v1/tasks", "", body)
    claim = await service.claim(sessionmaker, request)
    assert isinstance(claim, Claim)
    return claim


def encoded(body: dict[str, object]) -> bytes:
    return httpx.Request("POST", "http://x", json=body).content


async def test_a_key_in_flight_is_409_with_retry_after_until_it_is_released(
    client: httpx.AsyncClient, auth: dict[str, str], sessionmaker: SessionMaker
) -> None:
    body = http_task(URL)
    claim = await hold(sessionmaker, encoded(body))
    headers = {**auth, "Idempotency-Key": "k"}

    busy = await client.post("/v1/tasks", json=body, headers=headers)
    assert busy.status_code == 409
    assert busy.headers["retry-after"] == "1"
    assert busy.headers["content-type"] == "application/problem+json"
    assert busy.json()["type"] == "urn:backsync:problem:idempotency-key-in-use"
    assert (await client.get("/v1/tasks", headers=auth)).json()["items"] == []

    await service.finish(sessionmaker, claim, None)  # the other process failed: released
    retry = await client.post("/v1/tasks", json=body, headers=headers)
    assert retry.status_code == 201, retry.text


async def test_a_different_request_under_a_key_in_flight_is_still_a_mismatch(
    client: httpx.AsyncClient, auth: dict[str, str], sessionmaker: SessionMaker
) -> None:
    await hold(sessionmaker, encoded(http_task(URL, name="a")))
    response = await client.post(
        "/v1/tasks", json=http_task(URL, name="b"), headers={**auth, "Idempotency-Key": "k"}
    )
    assert response.status_code == 422
    assert response.json()["type"] == "urn:backsync:problem:idempotency-key-mismatch"


async def test_an_abandoned_claim_is_taken_over_after_its_lease(
    client: httpx.AsyncClient, auth: dict[str, str], sessionmaker: SessionMaker
) -> None:
    body = http_task(URL)
    claim = await hold(sessionmaker, encoded(body))
    await backdate(sessionmaker, created_at=utcnow() - service.LEASE - timedelta(seconds=1))

    response = await client.post("/v1/tasks", json=body, headers={**auth, "Idempotency-Key": "k"})
    assert response.status_code == 201, response.text
    # The process that lost its claim cannot overwrite the new owner's record.
    await service.finish(sessionmaker, claim, None)
    replay = await client.post("/v1/tasks", json=body, headers={**auth, "Idempotency-Key": "k"})
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == response.content


async def test_finishing_a_keyed_request_purges_expired_records_of_any_tenant(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_key: MakeKey,
    sessionmaker: SessionMaker,
) -> None:
    other = await make_key("globex")
    body = http_task(URL)
    await client.post("/v1/tasks", json=body, headers={**other, "Idempotency-Key": "a"})
    await backdate(sessionmaker, expires_at=utcnow() - timedelta(seconds=1))

    await client.post("/v1/tasks", json=body, headers={**auth, "Idempotency-Key": "b"})

    rows = await sql(sessionmaker, "SELECT tenant_id, key, state FROM idempotency_key")
    assert rows == [{"tenant_id": await tenant_id(sessionmaker), "key": "b", "state": "completed"}]
