"""The header's syntax, and the fingerprint and scope a key is stored under."""

from __future__ import annotations

import httpx
import pytest

from service.errors import InvalidInput
from service.idempotency.service import fingerprint, parse_key, scope_of
from tests.helpers import http_task

URL = "https://api.example.com/items"


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b"x" * 256, b"caf\xc3\xa9", b"tab\there", b'""'],
    ids=["empty", "blank", "too-long", "non-ascii", "control", "empty-quoted"],
)
async def test_a_malformed_key_is_422_and_nothing_runs(
    client: httpx.AsyncClient, auth: dict[str, str], raw: bytes
) -> None:
    headers = [*((k.encode(), v.encode()) for k, v in auth.items()), (b"Idempotency-Key", raw)]
    response = await client.post("/v1/tasks", json=http_task(URL), headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert (await client.get("/v1/tasks", headers=auth)).json()["items"] == []


async def test_two_key_headers_are_422(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    headers = [*auth.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    response = await client.post("/v1/tasks", json=http_task(URL), headers=headers)
    assert response.status_code == 422
    assert "one Idempotency-Key" in response.json()["detail"]


async def test_the_drafts_quoted_form_is_the_same_key(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = http_task(URL)
    bare = await client.post("/v1/tasks", json=body, headers={**auth, "Idempotency-Key": "k-1"})
    quoted = await client.post("/v1/tasks", json=body, headers={**auth, "Idempotency-Key": '"k-1"'})
    assert bare.status_code == 201
    assert quoted.headers["idempotent-replayed"] == "true"
    assert quoted.content == bare.content


def test_parse_key() -> None:
    assert parse_key([]) is None
    assert parse_key(["  abc  "]) == "abc"
    assert parse_key(['"8e03978e-40d5"']) == "8e03978e-40d5"
    assert parse_key([r'"a\"b\\c"']) == 'a"b\\c'
    assert parse_key(["x" * 255]) == "x" * 255
    for bad in ([""], ["x" * 256], ["é"], ["a\x7f"], ["a", "b"]):
        with pytest.raises(InvalidInput):
            parse_key(bad)


def test_the_fingerprint_covers_method_path_query_and_body_bytes() -> None:
    base = fingerprint("POST", "/v1/tasks", "a=1&b=2", b'{"x": 1}')
    assert fingerprint("POST", "/v1/tasks", "b=2&a=1", b'{"x": 1}') == base  # order-free
    assert len(base) == 64
    for other in (
        fingerprint("PUT", "/v1/tasks", "a=1&b=2", b'{"x": 1}'),
        fingerprint("POST", "/v1/task", "a=1&b=2", b'{"x": 1}'),
        fingerprint("POST", "/v1/tasks", "a=1&b=3", b'{"x": 1}'),
        fingerprint("POST", "/v1/tasks", "a=1&b=2", b'{"x":1}'),
        fingerprint("POST", "/v1/tasks", "a=1&b=2", b""),
        # parts are length-prefixed: moving bytes between parts changes the digest
        fingerprint("POST", "/v1/tasksa=1&b=2", "", b'{"x": 1}'),
    ):
        assert other != base


def test_the_scope_is_method_and_concrete_path_hashed_when_too_long() -> None:
    assert scope_of("post", "/v1/tasks/tsk_1/runs") == "POST /v1/tasks/tsk_1/runs"
    long_path = "/v1/tasks/" + "x" * 400 + "/runs"
    hashed = scope_of("POST", long_path)
    assert hashed.startswith("POST sha256:")
    assert len(hashed) <= 300
    assert hashed != scope_of("POST", long_path + "x")
