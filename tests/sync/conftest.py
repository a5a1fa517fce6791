from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from service.config import Settings
from service.http_client import create_upstream_client


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The same outbound client the worker uses (redirects followed, no proxy from env)."""
    async with create_upstream_client(Settings()) as client:
        yield client
