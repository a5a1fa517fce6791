from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.config import Settings
from service.http_client import create_upstream_client
from service.sync.client import UpstreamClient


@pytest.fixture
async def http() -> AsyncIterator[UpstreamClient]:
    """The same outbound client the worker uses (SSRF guard on, no proxy from env), with
    the loopback upstream allow-listed: every engine test goes through the guard."""
    settings = Settings(
        _env_file=None,
        block_private_targets=True,
        allowed_targets=["127.0.0.1/32"],
    )
    async with create_upstream_client(settings) as client:
        yield client
