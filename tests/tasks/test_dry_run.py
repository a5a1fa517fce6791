"""`POST /v1/tasks:validate` fetches one page and stores nothing."""

from __future__ import annotations

import httpx
from starlette.responses import JSONResponse

from tests.fixtures.upstream import Upstream, cursor, make_records
from tests.helpers import http_task

CURSOR = {"type": "cursor", "cursor_path": "next_token", "cursor_param": "next_token"}


async def test_dry_run_shows_records_keys_rejections_and_the_next_page(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    records = make_records(20)
    records[3] = {"value": "no id"}
    url = upstream.route("/preview", cursor(records, size=10))
    body = http_task(
        url,
        records_path="data",
        pagination=CURSOR,
        auth={"type": "query", "name": "api_key", "value": "sekret-query-9876"},
    )

    response = await client.post("/v1/tasks:validate", json=body, headers=auth)

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["ok"] is True
    assert result["http_status"] == 200
    assert result["record_count"] == 10
    assert result["records"] == records[:5]
    assert result["keys"] == [r["id"] for r in records[:10] if "id" in r]
    assert result["rejected"] == [{"index": 3, "reason": "primary key 'id' is missing"}]
    assert result["next_page"]["params"]["next_token"] == "10"
    assert result["headers"]["content-type"] == "application/json"
    assert "sekret-query-9876" not in response.text
    assert len(upstream.hits("/preview")) == 1
    assert upstream.hits("/preview")[0].query["api_key"] == "sekret-query-9876"
    listed = await client.get("/v1/tasks", headers=auth)
    assert listed.json()["items"] == []  # nothing stored


async def test_dry_run_reports_upstream_failures_and_bad_paths(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    url = upstream.route("/denied", lambda _r: JSONResponse({"error": "no"}, status_code=401))
    failed = (await client.post("/v1/tasks:validate", json=http_task(url), headers=auth)).json()
    assert failed["ok"] is False
    assert failed["error"]["http_status"] == 401
    assert failed["error"]["retryable"] is False

    url = upstream.route("/object", lambda _r: JSONResponse({"data": {"id": 1}}))
    bad = (
        await client.post(
            "/v1/tasks:validate", json=http_task(url, records_path="data"), headers=auth
        )
    ).json()
    assert bad["ok"] is False
    assert bad["error"]["code"] == "bad_config"


async def test_dry_run_refuses_a_records_path_typo_instead_of_zero_records(
    client: httpx.AsyncClient, auth: dict[str, str], upstream: Upstream
) -> None:
    url = upstream.route("/typo", lambda _r: JSONResponse({"data": make_records(3), "page": 1}))

    typo = await client.post(
        "/v1/tasks:validate", json=http_task(url, records_path="dat"), headers=auth
    )
    empty = await client.post(
        "/v1/tasks:validate",
        json=http_task(
            upstream.route("/none", lambda _r: JSONResponse({"data": []})), records_path="data"
        ),
        headers=auth,
    )

    assert typo.json()["ok"] is False
    assert typo.json()["error"] == {
        "code": "bad_config",
        "message": "records_path 'dat' is not in the response (its top-level keys: data, page)",
        "http_status": None,
        "retryable": False,
    }
    assert empty.json()["ok"] is True  # an empty list is a valid empty page
    assert empty.json()["record_count"] == 0


async def test_dry_run_needs_a_key_and_a_valid_task(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    assert (await client.post("/v1/tasks:validate", json={})).status_code == 401
    response = await client.post("/v1/tasks:validate", json={"name": "x"}, headers=auth)
    assert response.status_code == 422
    assert any(error["loc"][:2] == ["body", "source"] for error in response.json()["errors"])
