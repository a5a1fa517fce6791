"""Liveness and readiness for orchestrators."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from service.dependencies import State
from service.migrations import current_revision, head_revision

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ready", "database": True, "redis": True, "migrations": True}]
        }
    )

    status: Literal["ready", "unavailable"]
    database: bool
    redis: bool
    migrations: bool


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Alive: the process answers"""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {"model": Readiness, "description": "A dependency is down or migrations are behind"}
    },
)
async def readyz(state: State, response: Response) -> Readiness:
    """Ready: database and Redis reachable, migrations current"""
    database = migrations = False
    try:
        async with state["engine"].connect() as connection:
            await connection.execute(text("SELECT 1"))
        database = True
        revision = await current_revision(state["engine"])
        migrations = revision == head_revision()
    except Exception:  # noqa: S110 - any failure means "not ready", reported below
        pass
    redis = await state["queue"].ping()
    ready = database and redis and migrations
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(
        status="ready" if ready else "unavailable",
        database=database,
        redis=redis,
        migrations=migrations,
    )
