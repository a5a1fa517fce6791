"""Every error is RFC 9457 problem+json; no input a client can send gives a 500 (SPEC §2)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.fixtures.app import api_client
from tests.helpers import create_task, http_task

PROBLEM = "application/problem+json"
URL = "https://api.example.com/items"
SECRET = "fuzz-secret-token-abcd"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert isinstance(problem["type"], str)
    assert problem["type"]
    assert isinstance(problem["title"], str)
    assert problem["title"]
    assert problem["status"] == status
    assert isinstance(problem.get("detail", ""), str)
    assert "Traceback" not in response.text
    return problem


async def test_malformed_json_is_422(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for content in (b"{", b'{"name": }', b"not json", b'{"name": "x",}', b"\xff\xfe"):
        response = await client.post(
            "/v1/tasks", content=content, headers={**auth, "Content-Type": "application/json"}
        )
        problem = assert_problem(response, 422)
        assert problem["errors"]
        assert problem["errors"][0]["loc"][0] == "body"


async def test_an_empty_body_is_422(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.post("/v1/tasks", headers=auth)
    assert assert_problem(response, 422)["errors"][0]["loc"] == ["body"]


async def test_wrong_types_are_422_with_each_field(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = {
        "name": 42,
        "source": {"url": URL, "primary_key": "id", "params": {"a": [1]}},
        "tags": "x",
        "paused": "maybe",
    }
    problem = assert_problem(await client.post("/v1/tasks", json=body, headers=auth), 422)
    assert problem["type"] == "urn:backsync:problem:validation"
    locs = [error["loc"] for error in problem["errors"]]
    assert ["body", "name"] in locs
    assert ["body", "tags"] in locs
    assert ["body", "paused"] in locs
    assert any(loc[:4] == ["body", "source", "params", "a"] for loc in locs)
    assert all(isinstance(error["msg"], str) and error["msg"] for error in problem["errors"])
    assert all(set(error) == {"loc", "msg"} for error in problem["errors"])


async def test_an_unknown_route_is_a_404_problem(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for path in ("/v1/nothing-here", "/nope", "/v1/tasks/tsk_x/unknown"):
        assert_problem(await client.get(path, headers=auth), 404)


async def test_a_wrong_method_is_a_405_problem(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.put("/v1/tasks", json={}, headers=auth)
    assert_problem(response, 405)
    assert "POST" in response.headers["allow"]
    assert_problem(await client.post("/v1/runs/run_x", headers=auth), 405)


async def test_a_missing_task_is_a_404_problem(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    problem = assert_problem(await client.get("/v1/tasks/tsk_missing", headers=auth), 404)
    assert problem["type"] == "urn:backsync:problem:not-found"
    assert "tsk_missing" in problem["detail"]


async def test_bodies_python_cannot_parse_are_422(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for content in (
        '{"name": "\u00e9"}'.encode("latin-1"),
        b"[" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
    ):
        response = await client.post(
            "/v1/tasks", content=content, headers={**auth, "Content-Type": "application/json"}
        )
        assert assert_problem(response, 422)["errors"] == [
            {"loc": ["body"], "msg": "JSON decode error"}
        ]


async def test_a_nul_in_the_url_is_a_400_problem(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    # PostgreSQL refuses NUL in text: without the guard these were 500s there.
    for path in (
        "/v1/tasks?user_id=%00",
        "/v1/tasks?tag=a%00b",
        "/v1/tasks?cursor=x&user_id=u%00",
        "/v1/tasks/tsk_%00",
        "/v1/tasks/%00/records",
        "/v1/runs/run_%00",
    ):
        assert_problem(await client.get(path, headers=auth), 400)


# ---- body size limit -----------------------------------------------------------------

LIMIT = 2048


@pytest.fixture
async def small_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings.model_copy(update={"max_body_bytes": LIMIT})) as http:
        yield http


def big_task(size: int) -> bytes:
    body = http_task(URL, params={"padding": "x" * size})
    return json.dumps(body).encode()


async def test_a_body_over_the_limit_with_content_length_is_413(
    small_client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    content = big_task(LIMIT)
    response = await small_client.post(
        "/v1/tasks", content=content, headers={**auth, "Content-Type": "application/json"}
    )
    assert_problem(response, 413)
    patched = await small_client.patch(
        "/v1/tasks/tsk_x", content=content, headers={**auth, "Content-Type": "application/json"}
    )
    assert_problem(patched, 413)


async def test_a_streamed_body_over_the_limit_is_413(
    small_client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    content = big_task(LIMIT)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 512):
            yield content[start : start + 512]

    response = await small_client.post(
        "/v1/tasks", content=chunks(), headers={**auth, "Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert assert_problem(response, 413)["type"] == "urn:backsync:problem:payload-too-large"
    assert (await small_client.get("/v1/tasks", headers=auth)).json()["items"] == []


async def test_a_body_under_the_limit_passes(
    small_client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    content = big_task(LIMIT // 2)
    assert len(content) < LIMIT

    async def chunks() -> AsyncIterator[bytes]:
        yield content[:100]
        yield content[100:]

    response = await small_client.post(
        "/v1/tasks", content=chunks(), headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


# ---- odd bodies ----------------------------------------------------------------------


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def nested_list(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def source(**extra: Any) -> dict[str, Any]:
    return {"url": URL, "primary_key": "id", "auth": {"type": "bearer", "token": SECRET}, **extra}


def task(**extra: Any) -> dict[str, Any]:
    return {"name": "fuzz", "source": source(), **extra}


ODD_JSON: list[Any] = [
    None,
    [],
    [task()],
    "a string",
    12,
    {},
    {"name": None, "source": None},
    task(name="x" * 10_000),
    task(name="ünïcødé-名前"),
    task(name="zero\u0000byte"),
    task(user_id="u\u0000ser"),
    task(user_id="😀" * 50, tags=["emoji😀"]),
    task(user_id="\u202e\u200b\ufeff"),
    task(source=source(params={"big": 10**30})),
    task(source=source(params={"negbig": -(10**30)})),
    task(source=source(params={"huge": 10**400})),
    task(source=source(params={"float": 1e308})),
    task(schedule={"every_seconds": 10**30}),
    task(schedule={"every_seconds": 3600, "jitter_seconds": 10**30}),
    task(retry={"max_attempts": 10**30}),
    task(schedule={"every_seconds": 1e300}),
    task(source=source(pagination={"type": "offset", "start": 1e300})),
    task(source=source(pagination={"type": "page_number", "start": 10**30, "size": 10**30})),
    task(
        source=source(incremental={"cursor_path": "ts", "param": "since", "initial_value": 10**30})
    ),
    task(source=source(body=nested(200))),
    task(health_mapping=nested(200)),
    task(health_mapping={"big": 10**30, "list": nested_list(300)}),
    task(source=source(headers={"X-Long": "v" * 9000})),
    task(source=source(headers={"X-Bad\r\nInjected": "1", "X-Ok": "a\r\nb"})),
    task(source=source(records_path=".", primary_key=["a"] * 11)),
    task(source=source(url="http://" + "a" * 70 + ".example.com/" + "p" * 5000)),
    task(source=source(url="http://[::1]:99999/")),
    task(source=source(url="https://exa mple.com/")),
    task(source=source(auth={"type": "bearer", "token": SECRET, "extra": SECRET})),
    task(source=source(auth={"type": "bogus", "token": SECRET})),
    task(source=source(auth={"type": "basic", "username": SECRET, "password": 1234})),
    task(source=source(auth=[SECRET])),
    task(tags=[None, 1, {"a": 1}]),
    task(tags=["t"] * 21),
    task(extra_field=SECRET, another={"nested": SECRET}),
    {"source": [1, 2, 3], "name": ["x"]},
    {**task(), "schedule": {"cron": "* * * * *", "timezone": "\u0000"}},
]


def raw(body: Any, old: str, new: str) -> bytes:
    text = json.dumps(body)
    assert old in text
    return text.replace(old, new, 1).encode()


# Bodies Python's json module accepts but strict JSON does not, or too deep to build above.
ODD_RAW: list[bytes] = [
    raw(task(source=source(params={"nan": 1})), ": 1}", ": NaN}"),
    raw(task(limits={"timeout_seconds": 1}), ": 1}", ": Infinity}"),
    raw(task(source=source(params={"inf": 1})), ": 1}", ": -Infinity}"),
    raw(task(health_mapping={"v": 1}), ": 1}", ": NaN}"),
    raw(task(user_id="SURROGATE"), "SURROGATE", "\\ud800"),
    raw(task(source=source(params={"p": "SURROGATE"})), "SURROGATE", "\\udfff"),
    raw(task(health_mapping={"SURROGATE": 1}), "SURROGATE", "\\ud83d"),
    raw(task(source=source(params={"p": "NUL"})), "NUL", "\\u0000"),
    b'{"name": "dup", "name": "fuzz", "source": {"url": "'
    + URL.encode()
    + b'", "primary_key": "id"}}',
    raw(task(limits={"timeout_seconds": 1}), ": 1}", ": 1e400}"),
    raw(task(health_mapping={"v": 1}), '"v": 1', '"v": ' + '{"a": ' * 5000 + "1" + "}" * 5000),
    raw(task(source=source(body={"deep": 1})), '"deep": 1', '"deep": ' + "[" * 900 + "]" * 900),
    b"[" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    '{"name": "\u00e9"}'.encode("latin-1"),
]


def assert_safe(response: httpx.Response) -> None:
    sent = response.request.content[:300]
    assert response.status_code < 500, (sent, response.text)
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    assert SECRET not in response.text
    if response.status_code >= 400:
        assert_problem(response, response.status_code)


async def test_odd_bodies_never_break_post(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for body in ODD_JSON:
        response = await client.post(
            "/v1/tasks", json=body, params={"on_conflict": "replace"}, headers=auth
        )
        assert_safe(response)
    for content in ODD_RAW:
        response = await client.post(
            "/v1/tasks",
            content=content,
            params={"on_conflict": "replace"},
            headers={**auth, "Content-Type": "application/json"},
        )
        assert_safe(response)


async def test_odd_bodies_never_break_patch(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    target = await create_task(client, auth, task())
    path = f"/v1/tasks/{target['id']}"
    for body in ODD_JSON:
        patch = (
            {key: value for key, value in body.items() if key != "name"}
            if isinstance(body, dict)
            else body
        )
        assert_safe(await client.patch(path, json=patch, headers=auth))
    for content in ODD_RAW:
        assert_safe(
            await client.patch(
                path, content=content, headers={**auth, "Content-Type": "application/json"}
            )
        )
    assert (await client.get(path, headers=auth)).status_code == 200


async def test_credentials_are_checked_before_the_body(client: httpx.AsyncClient) -> None:
    """FastAPI reads the body before any dependency: a caller without a valid key hears
    about the key, not about its JSON."""
    for headers in ({}, {"Authorization": "Bearer bks_nope_nope"}):
        for content in (b"{", b"\xff\xfe", b"[" * 100_000):
            response = await client.post(
                "/v1/tasks",
                content=content,
                headers={**headers, "Content-Type": "application/json"},
            )
            assert_problem(response, 401)
        response = await client.get("/v1/tasks?limit=nope", headers=headers)
        assert_problem(response, 401)


async def test_a_valid_key_still_gets_the_validation_errors(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.get("/v1/tasks?limit=nope", headers=auth)
    assert assert_problem(response, 422)["errors"][0]["loc"] == ["query", "limit"]
