"""What a task asks the engine to fetch: source, auth, pagination, limits, retry.

These models are the engine's contract and are reused as the API's request schemas,
so what the API accepts is exactly what the engine can run.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

Name = Annotated[str, Field(min_length=1, max_length=200)]
DottedPath = Annotated[str, Field(max_length=500, pattern=r"^[^.\s]+(\.[^.\s]+)*$")]


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,200}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


def _sendable(value: str) -> str:
    """A value that can go into an HTTP header as it is: printable ASCII, spaces and tabs.
    Anything else (non-ASCII, a line break, NUL) cannot be sent, and would fail every run
    of the task, so it is refused when the task is registered."""
    if not _HEADER_VALUE.fullmatch(value):
        raise ValueError(
            "must be printable ASCII (no line breaks or other characters an HTTP header"
            " cannot carry); encode it as the upstream expects"
        )
    return value


HeaderValue = Annotated[str, Field(max_length=8192), AfterValidator(_sendable)]
"""A header value, or a credential sent in one."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoAuth(_Strict):
    type: Literal["none"] = "none"


class BearerAuth(_Strict):
    type: Literal["bearer"]
    token: Annotated[HeaderValue, Field(min_length=1)]


class HeaderAuth(_Strict):
    type: Literal["header"]
    name: Annotated[
        str, Field(min_length=1, max_length=200, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    ]
    value: Annotated[HeaderValue, Field(min_length=1)]


class QueryAuth(_Strict):
    type: Literal["query"]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    value: Annotated[str, Field(min_length=1, max_length=8192)]


class BasicAuth(_Strict):
    type: Literal["basic"]
    username: Annotated[str, Field(min_length=1, max_length=1000, pattern=r"^[^:]*$")]
    """RFC 7617: the user-id cannot contain a colon (it separates the password)."""
    password: Annotated[str, Field(max_length=8192)]


Auth = Annotated[
    NoAuth | BearerAuth | HeaderAuth | QueryAuth | BasicAuth, Field(discriminator="type")
]
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "none": (),
    "bearer": ("token",),
    "header": ("value",),
    "query": ("value",),
    "basic": ("password",),
}


def secret_values(auth: NoAuth | BearerAuth | HeaderAuth | QueryAuth | BasicAuth) -> list[str]:
    """The credential values in `auth` (what logs and errors must never show)."""
    return [getattr(auth, name) for name in SECRET_FIELDS[auth.type]]


class NoPagination(_Strict):
    """One request."""

    type: Literal["none"] = "none"


class PageNumberPagination(_Strict):
    """`?page=N`; stops on an empty page, a page shorter than `size`, or `total_pages_path`."""

    type: Literal["page_number"]
    page_param: str = "page"
    start: int = Field(default=1, ge=0)
    size_param: str | None = None
    size: int | None = Field(default=None, ge=1, le=100_000)
    total_pages_path: DottedPath | None = None


class OffsetPagination(_Strict):
    """`?offset=N&limit=M`; stops on a short page, at `total_path`, or when `has_more_path` is false."""  # noqa: E501 (the text is in openapi.json)

    type: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(default=100, ge=1, le=100_000)
    start: int = Field(default=0, ge=0)
    total_path: DottedPath | None = None
    has_more_path: DottedPath | None = None


class CursorPagination(_Strict):
    """Cursor read from the body at `cursor_path`, sent as `cursor_param`; stops when it is empty."""  # noqa: E501 (the text is in openapi.json)

    type: Literal["cursor"]
    cursor_path: DottedPath
    cursor_param: Annotated[str, Field(min_length=1)]


class NextUrlPagination(_Strict):
    """The body names the next page's URL (absolute or relative)."""

    type: Literal["next_url"]
    next_url_path: DottedPath


class LinkHeaderPagination(_Strict):
    """RFC 8288 `Link: <...>; rel="next"`."""

    type: Literal["link_header"]


Pagination = Annotated[
    NoPagination
    | PageNumberPagination
    | OffsetPagination
    | CursorPagination
    | NextUrlPagination
    | LinkHeaderPagination,
    Field(discriminator="type"),
]


class Incremental(_Strict):
    cursor_path: DottedPath
    param: Annotated[str, Field(min_length=1)]
    initial_value: str | int | float | None = None
    lag_seconds: int = Field(default=0, ge=0)
    end_param: str | None = None


ParamValue = str | int | float | bool


class Source(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://api.example.com/v2/daily_activity",
                    "headers": {"Accept": "application/json"},
                    "params": {"start_date": "2026-01-01"},
                    "auth": {"type": "bearer", "token": "oura-token-123456"},
                    "records_path": "data",
                    "primary_key": "id",
                    "pagination": {
                        "type": "cursor",
                        "cursor_path": "next_token",
                        "cursor_param": "next_token",
                    },
                }
            ]
        },
    )

    url: AnyHttpUrl
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    params: dict[str, ParamValue] = Field(default_factory=dict)
    body: dict[str, Any] | None = None
    auth: Auth = Field(default_factory=NoAuth)
    records_path: Annotated[str, Field(max_length=500)] = ""
    primary_key: DottedPath | Annotated[list[DottedPath], Field(min_length=1, max_length=10)]
    pagination: Pagination = Field(default_factory=NoPagination)
    incremental: Incremental | None = None
    conditional: bool = False
    detect_deletions: bool = Field(
        default=False,
        description=(
            "After a successful run that read the whole collection (every run without"
            " `incremental`, or a `full_refresh` run), mark the stored records that run did"
            " not see as deleted: the change feed shows them as `deleted: true`. Such runs"
            " read every page (no 304 or digest shortcut): absence needs every key."
        ),
    )

    @field_validator("url")
    @classmethod
    def _no_userinfo(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        if url.username or url.password:
            raise ValueError("credentials in the URL are refused; use `auth`")
        return url

    @field_validator("headers")
    @classmethod
    def _no_auth_header(cls, headers: dict[str, str]) -> dict[str, str]:
        if any(name.lower() in ("authorization", "proxy-authorization") for name in headers):
            raise ValueError("put credentials in `auth` (type bearer/header/basic), not in headers")
        for name in headers:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
        return headers

    @model_validator(mode="after")
    def _records_path_shape(self) -> Source:
        if self.records_path and any(not part for part in self.records_path.split(".")):
            raise ValueError("records_path must be a dotted path like 'data.items', or ''")
        return self


class Limits(_Strict):
    timeout_seconds: float = Field(default=30, gt=0, le=600)
    max_pages: int = Field(default=10_000, ge=1, le=10_000_000)
    max_response_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    requests_per_second: float | None = Field(default=None, gt=0, le=10_000)


class Retry(_Strict):
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff: Literal["exponential", "linear"] = "exponential"
    initial_delay_seconds: float = Field(default=10, ge=0, le=86_400)
    max_delay_seconds: float = Field(default=3600, ge=0, le=7 * 86_400)
