"""Why a fetch failed, in the terms a run reports: `code`, `message`, `http_status`, `retryable`."""

from __future__ import annotations

from typing import Any


class SyncError(Exception):
    code = "sync_error"
    retryable = False
    retry_after: float | None = None
    """Seconds the upstream asked us to wait (its `Retry-After`); the runner's next
    attempt waits at least that long."""
    requests: int = 0
    """Requests the failing page cost (its tries in place included): no committed page
    counts them, so the run adds them to its `stats.requests` when the attempt ends."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after

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

    def __init__(self, status: int, reason: str, *, retry_after: float | None = None):
        message = f"upstream answered {status} {reason}".strip()
        if retry_after is not None:
            message += f" (Retry-After: {retry_after:g}s)"
        super().__init__(message, http_status=status, retry_after=retry_after)
        self.retryable = status >= 500 or status in (408, 429)


class UpstreamUnavailable(SyncError):
    """Timeouts, resets and refused connections: transient by nature."""

    code = "upstream_unavailable"
    retryable = True


class UpstreamTimeout(UpstreamUnavailable):
    """No whole answer within `limits.timeout_seconds`: told apart from a refused or reset
    connection because each try costs a whole timeout (`request_retry` tries it less)."""

    code = "upstream_timeout"


class InvalidBody(SyncError):
    """Not JSON, or truncated: a broken response, so another attempt may get a good one."""

    code = "invalid_body"
    retryable = True


class CutOff(InvalidBody):
    """The connection closed before the answer was whole (or before there was one, as when
    a kept-alive connection is closed under us): a network blip, as transient as a reset,
    whereas a whole body that is not JSON is likely to come back the same."""


class TooManyRedirects(SyncError):
    """A redirect loop or chain longer than the client follows: misconfigured, not busy."""

    code = "too_many_redirects"


class BadRedirect(SyncError):
    """A redirect without a usable `Location`: the upstream is broken, not busy."""

    code = "bad_redirect"


class TargetRefused(SyncError):
    """The SSRF guard refused the URL or the address it resolves to (SPEC §2).

    Never retryable: the same URL resolves the same way next time, and a run that keeps
    knocking on an internal address is exactly what the guard is for.
    """

    code = "target_refused"


class HostHeld(SyncError):
    """The shared budget holds requests to this host back for longer than a worker
    should sleep (a long `Retry-After`, or many tasks on one slow host): the next
    attempt comes after `retry_after`, and the worker is free meanwhile."""

    code = "upstream_held"
    retryable = True


class ResponseTooLarge(SyncError):
    """Over `limits.max_response_bytes` (as sent or once decoded), or more than the
    process lets bodies hold at once: the same page would be as large next time."""

    code = "response_too_large"


class CompressionBomb(ResponseTooLarge):
    """A body that inflates past the server's `max_ratio` (`service.sync.body`)."""

    code = "compression_ratio_exceeded"


class BadConfig(SyncError):
    """The task's configuration does not fit what the upstream returns (wrong paths...)."""

    code = "bad_config"


class PageLimitReached(SyncError):
    code = "max_pages_exceeded"


class PaginationLoop(SyncError):
    code = "pagination_loop"
