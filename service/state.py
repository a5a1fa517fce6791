"""What the API process builds once at startup and hands to every request."""

from __future__ import annotations

from typing import TypedDict

from sqlalchemy.ext.asyncio import AsyncEngine

from service.broker.queue import Queue
from service.config import Settings
from service.crypto import SecretBox
from service.db import SessionMaker
from service.sync import BodyBudget, UpstreamClient


class AppState(TypedDict):
    settings: Settings
    engine: AsyncEngine
    sessionmaker: SessionMaker
    queue: Queue
    secrets: SecretBox
    http: UpstreamClient
    bodies: BodyBudget
    """The process's in-flight body bytes: dry runs share it (`BACKSYNC_API_MAX_INFLIGHT_BYTES`)."""
