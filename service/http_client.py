"""The one outbound HTTP client a process shares across all its runs (connection reuse).

Every connection it opens goes through the SSRF guard (`service.sync.ssrf`): the guard
is in the connection pool's network backend, so no request can skip it, and the
address it checked is the one the socket connects to.
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpcore
import httpx

from service import __version__
from service.config import Settings
from service.sync.ssrf import GuardedBackend, Resolver, TargetPolicy, system_resolver


def target_policy(settings: Settings) -> TargetPolicy:
    """`BLOCK_PRIVATE_TARGETS` and `ALLOWED_TARGETS` as the guard applies them."""
    return TargetPolicy.from_entries(
        settings.allowed_targets, block_private=settings.block_private_targets
    )


def create_upstream_client(
    settings: Settings, *, resolver: Resolver = system_resolver
) -> httpx.AsyncClient:
    """The guarded client; `resolver` is for tests (DNS answers that change per call)."""
    limits = httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=settings.upstream_max_connections,
    )
    backend = GuardedBackend(target_policy(settings), resolver=resolver)
    return httpx.AsyncClient(
        transport=_guarded_transport(backend, limits),
        trust_env=False,  # no proxy or netrc from the environment: targets are checked as given
        follow_redirects=False,  # the engine follows them, checking every hop
        timeout=httpx.Timeout(30.0, connect=settings.upstream_connect_timeout),
        headers={"User-Agent": f"Backsync/{__version__}"},
        cookies=_no_cookies(),
    )


def _guarded_transport(
    backend: httpcore.AsyncNetworkBackend, limits: httpx.Limits
) -> httpx.AsyncHTTPTransport:
    """httpx's transport (its error mapping is what the engine translates) over a pool
    that connects through `backend`. httpx takes no backend argument, so the pool it
    built is swapped for one that does; `tests/sync/test_ssrf.py` fails if that stops
    taking effect."""
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return transport


def _no_cookies() -> CookieJar:
    """A jar that keeps nothing: one client serves every tenant's tasks, and a cookie one
    upstream set must never ride along on another task's request to the same host."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
