"""The one outbound HTTP client a process shares across all its runs (connection reuse)."""

from __future__ import annotations

import httpx

from service import __version__
from service.config import Settings


def create_upstream_client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        trust_env=False,  # no proxy or netrc from the environment: targets are checked as given
        follow_redirects=True,
        max_redirects=5,
        timeout=httpx.Timeout(30.0, connect=settings.upstream_connect_timeout),
        limits=httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_connections,
        ),
        headers={"User-Agent": f"Backsync/{__version__}"},
    )
