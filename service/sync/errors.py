"""Why a fetch failed, in the terms a run reports: `code`, `message`, `http_status`, `retryable`."""

from __future__ import annotations

from typing import Any


class SyncError(Exception):
    code = "sync_error"
    retryable = False

    def __init__(self, message: str, *, http_status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        if code is not None:
            self.code = code

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "http_status": self.http_status,
            "retryable": self.retryable,
        }


class UpstreamStatusError(SyncError):
    """A non-2xx answer: 5xx and 429 are worth retrying, other 4xx are not."""

    code = "upstream_status"

    def __init__(self, status: int, reason: str):
        super().__init__(f"upstream answered {status} {reason}".strip(), http_status=status)
        self.retryable = status >= 500 or status in (408, 429)


class UpstreamUnavailable(SyncError):
    """Timeouts, resets and refused connections: transient by nature."""

    code = "upstream_unavailable"
    retryable = True


class InvalidBody(SyncError):
    """Not JSON, or truncated: a broken response, so another attempt may get a good one."""

    code = "invalid_body"
    retryable = True


class TooManyRedirects(SyncError):
    """A redirect loop or chain longer than the client follows: misconfigured, not busy."""

    code = "too_many_redirects"


class ResponseTooLarge(SyncError):
    code = "response_too_large"


class BadConfig(SyncError):
    """The task's configuration does not fit what the upstream returns (wrong paths...)."""

    code = "bad_config"


class PageLimitReached(SyncError):
    code = "max_pages_exceeded"


class PaginationLoop(SyncError):
    code = "pagination_loop"
