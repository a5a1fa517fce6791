"""Schemathesis hooks for `tests/fuzz/test_schemathesis.py` (loaded by the `st` CLI
through `SCHEMATHESIS_HOOKS`).

Fuzzed bodies carry URLs (a task's `source.url`, a webhook's `url`) that the API itself
resolves (the SSRF guard at registration) or fetches (`POST /v1/tasks:validate`). A
fuzzer must never send those requests, nor their DNS look-ups, off the machine, so every
URL a body holds is pointed at the test's loopback upstream before the call: the host
part of URL handling is what this changes; what the API does with the rest of the body
is still fuzzed.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

UPSTREAM_ENV = "BACKSYNC_FUZZ_UPSTREAM"
"""The loopback URL (an IP literal: no DNS) that every body URL is replaced with."""

URL_FIELDS = frozenset({"url"})


def _to_loopback(value: Any, upstream: str) -> Any:
    """`value` with each string under a `url` key replaced by `upstream`, at any depth."""
    if isinstance(value, dict):
        return {
            key: upstream
            if key in URL_FIELDS and isinstance(item, str)
            else _to_loopback(item, upstream)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_to_loopback(item, upstream) for item in value]
    return value


@schemathesis.hook
def before_call(
    context: schemathesis.HookContext, case: schemathesis.Case[Any], kwargs: Any
) -> None:
    """Every call, every phase: no body URL leaves loopback."""
    upstream = os.environ[UPSTREAM_ENV]
    if isinstance(case.body, dict | list):
        case.body = _to_loopback(case.body, upstream)
