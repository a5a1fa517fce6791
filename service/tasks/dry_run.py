"""`POST /v1/tasks:validate`: fetch the first page of a proposed task, store nothing.

It answers the questions people have while writing a task: does the URL answer, do
`records_path` and `primary_key` find what I think, which records would be rejected,
and would the paginator ask for another page.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from service.crypto import mask
from service.logs import bind_secrets
from service.sync import (
    SECRET_FIELDS,
    BodyBudget,
    Page,
    PageRequest,
    SyncError,
    UpstreamClient,
    fetch_one,
    first_request,
    records_of,
    secret_values,
)
from service.tasks.schemas import RunError, TaskIn

SAMPLE_SIZE = 5
KEY_LIMIT = 100
INTERESTING_HEADERS = (
    "content-type",
    "content-length",
    "etag",
    "last-modified",
    "cache-control",
    "link",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
)


class PageRef(BaseModel):
    url: str
    params: dict[str, Any] | None


class Rejected(BaseModel):
    index: int
    reason: str


class DryRun(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ok": True,
                    "request": {
                        "url": "https://api.example.com/v2/daily_activity",
                        "params": {"start_date": "2026-01-01"},
                    },
                    "http_status": 200,
                    "bytes": 18234,
                    "record_count": 50,
                    "records": [{"id": "a1", "steps": 8123}],
                    "keys": ["a1", "a2"],
                    "rejected": [{"index": 7, "reason": "primary key 'id' is missing"}],
                    "next_page": {
                        "url": "https://api.example.com/v2/daily_activity",
                        "params": {"start_date": "2026-01-01", "next_token": "abc"},
                    },
                    "headers": {"content-type": "application/json", "etag": '"v1"'},
                    "error": None,
                }
            ]
        }
    )

    ok: bool
    request: PageRef = Field(description="The first request, credentials masked")
    http_status: int | None = None
    bytes: int = 0
    record_count: int = Field(0, description="Records found at records_path")
    records: list[Any] = Field(default_factory=list, description="The first few records")
    keys: list[Any] = Field(default_factory=list, description="Primary keys (first 100)")
    rejected: list[Rejected] = Field(default_factory=list)
    next_page: PageRef | None = Field(None, description="The page a run would fetch next")
    headers: dict[str, str] = Field(default_factory=dict)
    error: RunError | None = None


def _shown(request: PageRequest, body: TaskIn) -> PageRef:
    params = dict(request.params or {})
    auth = body.source.auth
    if auth.type == "query":
        for name in SECRET_FIELDS["query"]:
            params[auth.name] = mask(getattr(auth, name))
    return PageRef(url=request.url, params=params if request.params is not None else None)


async def dry_run(
    client: UpstreamClient, body: TaskIn, bodies: BodyBudget | None = None, cap: int | None = None
) -> DryRun:
    """The first page as a run would fetch it: within the process's in-flight `bodies`
    and the server's `cap` on response sizes (the default limit is held to it)."""
    source, limits = body.source, body.limits
    bind_secrets(secret_values(source.auth))  # masked in this request's logs, by value
    request = first_request(source)
    largest = min(limits.max_response_bytes, cap) if cap else limits.max_response_bytes
    limits = limits.model_copy(update={"max_pages": 1, "max_response_bytes": largest})
    try:
        page = await fetch_one(client, source, limits, request, bodies=bodies)
    except SyncError as exc:
        return DryRun(ok=False, request=_shown(request, body), error=RunError(**exc.as_dict()))
    try:
        return _described(body, request, page)
    finally:
        page.release()  # never handed over: described and dropped at once


def _described(body: TaskIn, request: PageRequest, page: Page) -> DryRun:
    source = body.source
    records = records_of(page.fetched.body, source.records_path)
    return DryRun(
        ok=True,
        request=_shown(request, body),
        http_status=page.fetched.status,
        bytes=page.fetched.nbytes,
        record_count=len(records),
        records=records[:SAMPLE_SIZE],
        keys=[orjson.loads(row.key) for row in page.records.rows[:KEY_LIMIT]],
        rejected=[Rejected(index=r.index, reason=r.reason) for r in page.records.rejections],
        next_page=_shown(page.next, body) if page.next else None,
        headers={
            name: value for name in INTERESTING_HEADERS if (value := page.fetched.headers.get(name))
        },
    )
