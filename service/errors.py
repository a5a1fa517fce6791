"""Domain errors and their RFC 9457 problem+json rendering.

Services raise these; the API turns them into `application/problem+json`. The tree::

    ServiceError (500, never raised on purpose)
     ├── BadRequest                 400  a request no route could make sense of (NUL in the URL)
     ├── Unauthenticated            401  missing, malformed, unknown or revoked API key
     ├── NotFound                   404  also for another tenant's ids: existence is not leaked
     ├── Conflict                   409  e.g. a task name that is taken
     │    ├── CredentialsUnreadable 409  stored credentials no longer decrypt: send new ones
     │    └── IdempotencyKeyInUse   409  the key's first request is still running; `Retry-After`
     ├── PayloadTooLarge            413
     ├── InvalidInput               422  semantic validation; carries `errors: [{loc, msg}]`
     ├── IdempotencyKeyMismatch     422  the key was first used with a different request
     └── RateLimited                429  carries `retry_after`
          └── TooManyStreams        429  a key's cap of open event streams (service.runs.events)
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_JSON = "application/problem+json"


class FieldError(BaseModel):
    loc: list[str | int] = Field(examples=[["body", "source", "url"]])
    msg: str = Field(examples=["URL scheme should be 'http' or 'https'"])


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:backsync:problem:not-found",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "task tsk_01JD2Z3K9X4Q8M7N6B5V4C3X2Z not found",
                }
            ]
        }
    )

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


class ServiceError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal Server Error"

    def __init__(self, detail: str | None = None, *, errors: list[FieldError] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = errors

    def problem(self) -> Problem:
        return Problem(
            type=f"urn:backsync:problem:{self.slug}",
            title=self.title,
            status=self.status,
            detail=self.detail,
            errors=self.errors,
        )

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(ServiceError):
    status = 400
    slug = "bad-request"
    title = "Bad Request"


class Unauthenticated(ServiceError):
    status = 401
    slug = "unauthenticated"
    title = "Unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="backsync"'}


class NotFound(ServiceError):
    status = 404
    slug = "not-found"
    title = "Not Found"


class Conflict(ServiceError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class CredentialsUnreadable(Conflict):
    """The task's stored credentials no longer decrypt (the server's keys changed)."""

    slug = "credentials-unreadable"
    title = "Stored credentials cannot be read"


class IdempotencyKeyInUse(Conflict):
    """A retry that arrived while the key's first request is still being processed."""

    slug = "idempotency-key-in-use"
    title = "Idempotency Key In Use"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class PayloadTooLarge(ServiceError):
    status = 413
    slug = "payload-too-large"
    title = "Content Too Large"


class InvalidInput(ServiceError):
    status = 422
    slug = "validation"
    title = "Unprocessable Content"

    @classmethod
    def at(cls, loc: list[str | int], msg: str) -> InvalidInput:
        return cls(msg, errors=[FieldError(loc=loc, msg=msg)])


class IdempotencyKeyMismatch(ServiceError):
    """The key was first used with another request (method, path, query or body)."""

    status = 422
    slug = "idempotency-key-mismatch"
    title = "Idempotency Key Mismatch"


class RateLimited(ServiceError):
    status = 429
    slug = "rate-limited"
    title = "Too Many Requests"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: int = 1,
        limit_headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.retry_after = retry_after
        self.limit_headers = limit_headers or {}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after), **self.limit_headers}


def problem_responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each error it may raise, documented as problem+json.

    Errors that share a status share the entry: their titles join in the description and
    the first one listed gives the example.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        if error.status in out:
            out[error.status]["description"] += f"; or {error.title}"
            continue
        out[error.status] = {
            "model": Problem,
            "description": error.title,
            "content": {
                PROBLEM_JSON: {
                    "example": {
                        "type": f"urn:backsync:problem:{error.slug}",
                        "title": error.title,
                        "status": error.status,
                        "detail": error.title,
                    }
                }
            },
        }
    return out
