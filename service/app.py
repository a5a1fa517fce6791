"""The FastAPI application: routers, problem+json handlers, lifespan-built state."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__
from service.auth.cache import KeyCache
from service.auth.service import authenticate
from service.broker.queue import Queue
from service.broker.rate_limit import LocalShares, RateLimiter
from service.broker.revocations import RevocationListener
from service.config import Settings, get_settings
from service.crypto import SecretBox
from service.db import QuickStatements, create_engine, create_sessionmaker, reading
from service.dependencies import API_KEY, state_of
from service.errors import PROBLEM_JSON, FieldError, Problem, ServiceError
from service.health.router import router as health_router
from service.http_client import create_upstream_client
from service.middleware import BodyLimit, NulFreeUrl, RequestId
from service.notifications.router import router as events_router
from service.notifications.webhooks.router import router as webhooks_router
from service.openapi import finish as finish_openapi
from service.ops.metrics import router as metrics_router
from service.ops.router import router as ops_router
from service.push.router import router as push_router
from service.records.router import router as records_router
from service.runs.events import ProgressHub
from service.runs.router import router as runs_router
from service.state import AppState
from service.sync import BodyBudget
from service.tasks.router import router as tasks_router

log = logging.getLogger(__name__)

DESCRIPTION = """\
Backsync runs background sync for mobile apps on a server: register **sync tasks**
that pull from external HTTP APIs, trigger them, watch their **runs**, and read the
**change feed** of records that changed since you last looked.

Every `/v1` call needs `Authorization: Bearer bks_…` (make keys with
`backsync keys create --tenant NAME`). Errors are RFC 9457 `application/problem+json`.
"""


def _problem(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return _problem(exc.problem(), exc.headers())


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    unauthenticated = await _unauthenticated(request)
    if unauthenticated is not None:
        return unauthenticated
    return _invalid(
        [
            FieldError(
                loc=[p if isinstance(p, int) else str(p) for p in error.get("loc", ())],
                msg=str(error.get("msg", "")),
            )
            for error in exc.errors()
        ]
    )


async def _unauthenticated(request: Request) -> JSONResponse | None:
    """The 401 for a request to an authenticated route that is both malformed and without
    valid credentials: FastAPI reads and validates the body before any dependency runs,
    so without this a caller with no key would learn about its JSON first."""
    if not _needs_caller(request.scope.get("route")):
        return None
    state = state_of(request)
    try:
        await authenticate(state["quick"], request.headers.get("authorization"))
    except ServiceError as exc:
        return _problem(exc.problem(), exc.headers())
    return None


def _operation_id(route: APIRoute) -> str:
    return route.name


def _needs_caller(route: object) -> bool:
    dependant = getattr(route, "dependant", None)
    return dependant is not None and _calls(dependant, API_KEY)


def _calls(dependant: Dependant, target: object) -> bool:
    return dependant.call is target or any(_calls(d, target) for d in dependant.dependencies)


def _invalid(errors: list[FieldError]) -> JSONResponse:
    return _problem(
        Problem(
            type="urn:backsync:problem:validation",
            title="Unprocessable Content",
            status=422,
            detail="the request is not valid; see `errors`",
            errors=errors,
        )
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI's answer to a JSON body it could not decode (not UTF-8, nested too deep):
        # malformed JSON, like any other.
        return await _unauthenticated(request) or _invalid(
            [FieldError(loc=["body"], msg="JSON decode error")]
        )
    try:
        title = HTTPStatus(exc.status_code).phrase
    except ValueError:
        title = "HTTP error"
    return _problem(
        Problem(title=title, status=exc.status_code, detail=str(exc.detail)),
        dict(exc.headers or {}),
    )


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _problem(Problem(title="Internal Server Error", status=500, detail="internal error"))


SHARE_SECONDS = 1.0
"""How long a process's share of a key's calls lasts (`LocalShares`)."""


def _api_limiter(settings: Settings, queue: Queue) -> LocalShares | None:
    if not settings.api_rate_per_second:
        return None
    limiter = RateLimiter(
        queue.redis,
        settings.redis_key_prefix,
        name="api-rate",
        rate=settings.api_rate_per_second,
        burst=settings.api_rate_burst,
        health=queue.health,  # Redis away: no wait, the call goes through
    )
    # A tenth of the burst at most: what one process may admit past the limit.
    return LocalShares(limiter, max_batch=settings.api_rate_burst // 10, lifetime=SHARE_SECONDS)


def _calm_the_garbage_collector() -> None:
    """Freeze what startup built (modules, the app, the models' schemas) and collect
    young objects less often, as the worker does (`service.worker`): a request makes a
    few hundred short-lived objects, so CPython's default threshold (700) ran a
    collection about once a request, 6% of the API's CPU on `GET /v1/runs/{id}`;
    with 50,000 the GET cost 10% less CPU and the trigger 5-15% (bench/api.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[AppState]:
        # Half the connections for the hot paths' single statements: with a quarter,
        # 50 concurrent GETs queued for them (p50 20 ms, 13 ms with half: bench/api.py).
        quick_connections = max(1, settings.api_database_connections // 2)
        engine = create_engine(
            settings.database_url,
            pool_size=max(1, settings.api_database_connections - quick_connections),
            max_overflow=0,
        )
        queue = await Queue.connect(settings)
        http = create_upstream_client(settings)
        reads = reading(engine)
        quick = QuickStatements(reads, quick_connections)
        await quick.start()
        keys = KeyCache(settings.api_key_cache_seconds)
        api_limiter = _api_limiter(settings, queue)

        def forget(key_prefix: str) -> None:
            keys.forget(key_prefix)
            if api_limiter is not None:
                api_limiter.drop(key_prefix)

        def forget_all() -> None:
            keys.clear()
            if api_limiter is not None:
                api_limiter.clear()

        revocations = RevocationListener(
            queue.redis, settings.redis_key_prefix, forget=forget, forget_all=forget_all
        )
        revocations.start()
        _calm_the_garbage_collector()
        progress = ProgressHub(
            reads,
            poll_seconds=settings.events_poll_seconds,
            max_streams_per_key=settings.events_max_streams_per_key,
        )
        try:
            yield AppState(
                settings=settings,
                engine=engine,
                sessionmaker=create_sessionmaker(engine),
                reads=reads,
                quick=quick,
                progress=progress,
                keys=keys,
                api_limiter=api_limiter,
                push_limiter=RateLimiter.per_minute(
                    queue.redis,
                    settings.redis_key_prefix,
                    "push-rate",
                    settings.push_rate_per_minute,
                    queue.health,
                ),
                revocations=revocations,
                queue=queue,
                secrets=SecretBox(settings.secret_keys),
                http=http,
                bodies=BodyBudget(
                    settings.api_max_inflight_bytes, max_ratio=settings.max_compression_ratio
                ),
            )
        finally:
            await progress.close()
            await revocations.close()
            await quick.close()
            await http.aclose()
            await queue.close()
            await engine.dispose()

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from files shipped in the
    # installed package (fastapi-offline), not from a CDN, so they work on a machine with
    # no internet access.
    app = FastAPIOffline(
        # Readable, stable operation ids (`list_tasks`, not `list_tasks_v1_tasks_get`): a
        # generated client's method names (tests/test_openapi.py checks they are unique).
        generate_unique_id_function=_operation_id,
        title="Backsync",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "tasks", "description": "Register and manage sync tasks"},
            {"name": "runs", "description": "Trigger, inspect and cancel runs"},
            {"name": "records", "description": "The change feed of synced records"},
            {
                "name": "events",
                "description": "What happened: runs ended, records changed, tasks paused",
            },
            {
                "name": "webhooks",
                "description": "Events delivered to your endpoints, signed per Standard Webhooks",
            },
            {
                "name": "push",
                "description": "Secret URLs a provider's new-data notification calls to"
                " trigger a task (`/v1/push/{token}` needs no API key)",
            },
            {
                "name": "health",
                "description": "Health samples from phones and wearables: batches, daily"
                " summaries by local day, source priority, a change feed",
            },
            {"name": "operations", "description": "Liveness and readiness"},
        ],
    )
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_openapi(build_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(NulFreeUrl)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestId)
    routers = (
        tasks_router,
        runs_router,
        records_router,
        events_router,
        webhooks_router,
        push_router,
        ops_router,
    )
    for router in routers:
        app.include_router(router)
    app.include_router(health_router)
    if settings.metrics_enabled:
        app.include_router(metrics_router)
    return app
