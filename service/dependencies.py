"""FastAPI dependencies: typed access to the lifespan state, the unit of work, the caller."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, cast

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.auth.service import Principal, bearer_key, verify
from service.broker.outage import FAIL_OPEN, RedisUnavailable
from service.broker.queue import Queue
from service.broker.rate_limit import Verdict
from service.broker.revocations import is_marked, revoked_marker
from service.config import Settings
from service.crypto import SecretBox
from service.db import QuickStatements, SessionMaker
from service.errors import RateLimited
from service.logs import bind_log_context
from service.state import AppState

log = logging.getLogger(__name__)


# The small dependencies are `async def` on purpose: FastAPI runs a plain `def` one in a
# worker thread, a thread hand-off per request for a dictionary lookup. And they take the
# request, not `State`: FastAPI solves a dependency's own dependencies again for every
# dependency that declares them (cached or not), about 10 µs each on every request
# (bench/api.py).
def state_of(request: Request) -> AppState:
    """The lifespan's state, as uvicorn hands it to each request."""
    return cast(AppState, request.scope["state"])


async def app_state(request: Request) -> AppState:
    return state_of(request)


State = Annotated[AppState, Depends(app_state)]


class UnitOfWork:
    """The request's transaction; work registered with `after_commit` runs once it commits.

    That is how a run is enqueued: only after its row exists for the worker to read, and
    never for a request that rolled back. `after_rollback` is the other branch: work that
    must not race the failed transaction (releasing an idempotency key, say) and that
    runs once its locks are gone; `failure` is then what the request raised.

    The session is made when first asked for: a request that writes through single
    statements instead (a trigger, `service.db.QuickStatements`) costs no session, commit
    or close (bench/api.py).
    """

    def __init__(self, sessionmaker: SessionMaker):
        self._sessionmaker = sessionmaker
        self._session: AsyncSession | None = None
        self.failure: BaseException | None = None
        self._after_commit: list[Callable[[], Awaitable[object]]] = []
        self._after_rollback: list[Callable[[], Awaitable[object]]] = []

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            self._session = self._sessionmaker()
        return self._session

    def after_commit(self, action: Callable[[], Awaitable[object]]) -> None:
        self._after_commit.append(action)

    def after_rollback(self, action: Callable[[], Awaitable[object]]) -> None:
        self._after_rollback.append(action)

    async def run_after_commit(self) -> None:
        await _run_all(self._after_commit)

    async def run_after_rollback(self) -> None:
        await _run_all(self._after_rollback)


async def _run_all(actions: list[Callable[[], Awaitable[object]]]) -> None:
    for action in actions:
        try:
            await action()
        except RedisUnavailable as exc:  # logged once per outage (`service.broker.outage`)
            log.info("post-transaction action skipped: %s", exc)
        except Exception:
            # The database row is the truth; the worker's reconciler re-sends a lost
            # enqueue, and an idempotency key left in flight lapses after its lease.
            log.warning("post-transaction action failed", exc_info=True)


async def unit_of_work(request: Request) -> AsyncIterator[UnitOfWork]:
    uow = UnitOfWork(state_of(request)["sessionmaker"])
    try:
        yield uow
        if uow._session is not None:
            await uow._session.commit()
    except BaseException as exc:
        uow.failure = exc
        if uow._session is not None:
            await uow._session.rollback()
        await uow.run_after_rollback()
        raise
    finally:
        if uow._session is not None:
            await uow._session.close()
    await uow.run_after_commit()


# scope="function": commit (and run the after-commit work) before the response is sent.
# FastAPI's default for a dependency with yield closes it only after the response went
# out, so a client could be told 201 for a row that is not committed yet (or never is),
# and a follow-up request could miss it.
Work = Annotated[UnitOfWork, Depends(unit_of_work, scope="function")]


async def reads_of(request: Request) -> AsyncEngine:
    return state_of(request)["reads"]


Reads = Annotated[AsyncEngine, Depends(reads_of)]
"""For handlers that only read: connections with no transaction, so one statement is
one round trip (`service.db.reading`); never for a handler that writes. The engine, not
a connection: a dependency with `yield` costs more per request than the read itself
(FastAPI enters an exit stack and a cancel scope for it)."""


async def quick_of(request: Request) -> QuickStatements:
    return state_of(request)["quick"]


Quick = Annotated[QuickStatements, Depends(quick_of)]
"""Single statements of the hot paths, on PostgreSQL straight on the driver
(`service.db.QuickStatements`)."""


class ApiKey(HTTPBearer):
    """Declares the key in the OpenAPI document (the docs page's Authorize button), and
    is the dependency that reads and checks it (`current_principal`, which answers
    every failure with 401): one dependency where a declaration and a check were two
    (with the state, three: bench/api.py)."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        return await current_principal(request)


API_KEY = ApiKey(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="bks_<prefix>_<secret>",
    description="An API key (`backsync keys create`): `Authorization: Bearer bks_…`.",
)


async def current_principal(request: Request) -> Principal:
    """The caller, from its key: remembered for a few seconds once verified (the
    database lookup was the largest share of a read, `service.auth.cache`) and
    forgotten at once when revoked (`service.broker.revocations`); its rate limit
    taken from this process's share of the key's calls (`LocalShares`)."""
    state = state_of(request)
    raw_key = bearer_key(request.headers.get("authorization"))
    principal = state["keys"].get(raw_key)
    remembered = principal is not None
    if principal is None:
        principal = await _verified(state, raw_key)
    verdict = await _rate_verdict(state, principal, ask_revoked=remembered)
    if verdict is not None and verdict.flagged:
        state["keys"].forget(principal.key_prefix)
        principal = await _verified(state, raw_key)
    _within_rate(state["settings"], verdict)
    request.state.tenant = principal.tenant_id
    bind_log_context(tenant=principal.tenant_id)
    return principal


Caller = Annotated[Principal, Security(API_KEY)]


async def _verified(state: AppState, raw_key: str) -> Principal:
    principal = await verify(state["quick"], raw_key)
    state["keys"].remember(raw_key, principal)
    return principal


async def _rate_verdict(
    state: AppState, principal: Principal, *, ask_revoked: bool
) -> Verdict | None:
    """The key's rate limit verdict (None: no limit, or Redis is away) and, when
    `ask_revoked`, whether it was revoked since it was remembered: the same Lua call
    reads the revocation marker, one round trip for both. While this process hears of
    revocations at once (`RevocationListener`), the verdict comes from its share of the
    key's calls, which asks Redis (and the marker) only once per batch."""
    prefix, limiter = state["settings"].redis_key_prefix, state["api_limiter"]
    listening = state["revocations"].listening
    marker = revoked_marker(prefix, principal.key_prefix) if ask_revoked else None
    if limiter is not None:
        if listening:
            return await limiter.check(principal.key_prefix, flag=marker)
        return await limiter.limiter.check(principal.key_prefix, flag=marker)
    if marker is None or listening:
        return None
    queue = state["queue"]
    try:  # bounded, and not asked while Redis is known to be away (`broker.outage`)
        key = principal.key_prefix
        marked = await queue.health.call(lambda: is_marked(queue.redis, prefix, key))
    except FAIL_OPEN:
        return None
    return Verdict(retry_after=None, remaining=0, reset=0, flagged=True) if marked else None


def _within_rate(settings: Settings, verdict: Verdict | None) -> None:
    """The key's request rate (`BACKSYNC_API_RATE_PER_SECOND`, bursts of
    `BACKSYNC_API_RATE_BURST`), shared by every API process through Redis; past it, 429
    with `Retry-After` and the IETF draft's `RateLimit-Policy` / `RateLimit` headers."""
    if verdict is None or verdict.retry_after is None:
        return
    window = max(1, round(settings.api_rate_burst / settings.api_rate_per_second))
    raise RateLimited(
        f"this API key made more than {settings.api_rate_burst} requests at once or"
        f" {settings.api_rate_per_second:g} per second; retry in {verdict.retry_after} s",
        retry_after=verdict.retry_after,
        limit_headers={
            "RateLimit-Policy": f'"api";q={settings.api_rate_burst};w={window}',
            "RateLimit": f'"api";r={verdict.remaining};t={verdict.reset}',
        },
    )


async def settings_of(request: Request) -> Settings:
    return state_of(request)["settings"]


async def secrets_of(request: Request) -> SecretBox:
    return state_of(request)["secrets"]


async def queue_of(request: Request) -> Queue:
    return state_of(request)["queue"]


AppSettings = Annotated[Settings, Depends(settings_of)]
Secrets = Annotated[SecretBox, Depends(secrets_of)]
JobQueue = Annotated[Queue, Depends(queue_of)]
