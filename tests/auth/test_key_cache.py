"""Verified keys are remembered for seconds; revocation still takes effect at once
through Redis, and within the cache time when only the database was told."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import service.auth.cache as key_cache
from service.auth.service import revoke_key
from service.cli import _revoke_key
from service.config import Settings
from service.db import create_engine, create_sessionmaker, transaction
from tests.fixtures.app import MakeKey, api_client


def _prefix(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer bks_").split("_")[0]


@pytest.mark.parametrize("rate", [0, 1000], ids=["no-rate-limit", "rate-limit"])
async def test_a_remembered_key_revoked_with_the_cli_is_refused_at_once(
    settings: Settings, make_key: MakeKey, rate: float
) -> None:
    """With a rate limit the revocation marker rides in its Lua call; without, it is
    asked on its own."""
    cached = settings.model_copy(update={"api_key_cache_seconds": 60, "api_rate_per_second": rate})
    headers = await make_key("acme")
    async with api_client(cached) as client:
        assert (await client.get("/v1/tasks", headers=headers)).status_code == 200
        assert await _revoke_key(settings, _prefix(headers))
        refused = await client.get("/v1/tasks", headers=headers)
    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith("application/problem+json")


async def test_a_key_revoked_only_in_the_database_works_for_at_most_the_cache_time(
    settings: Settings, make_key: MakeKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What happens while Redis is unreachable at revocation: the documented bound. The
    cache's clock is the test's (with the real one, a loaded machine once took longer
    than the cache time between the first two requests)."""
    now = [1000.0]
    monkeypatch.setattr(key_cache, "time", SimpleNamespace(monotonic=lambda: now[0]))
    cached = settings.model_copy(update={"api_key_cache_seconds": 2.0})
    headers = await make_key("acme")
    engine = create_engine(settings.database_url)
    try:
        async with api_client(cached) as client:
            assert (await client.get("/v1/tasks", headers=headers)).status_code == 200
            async with transaction(create_sessionmaker(engine)) as session:
                assert await revoke_key(session, _prefix(headers))
            now[0] += 1.5  # within the cache time, whatever its jitter (up to a fifth sooner)
            still = await client.get("/v1/tasks", headers=headers)
            now[0] += 0.6  # past it
            later = await client.get("/v1/tasks", headers=headers)
    finally:
        await engine.dispose()
    assert still.status_code == 200  # remembered: the database is not asked again
    assert later.status_code == 401


async def test_a_wrong_secret_under_a_remembered_prefix_is_refused(
    settings: Settings, make_key: MakeKey
) -> None:
    cached = settings.model_copy(update={"api_key_cache_seconds": 60})
    headers = await make_key("acme")
    forged = {"Authorization": headers["Authorization"][:-4] + "AAAA"}
    async with api_client(cached) as client:
        assert (await client.get("/v1/tasks", headers=headers)).status_code == 200
        refused = await client.get("/v1/tasks", headers=forged)
        again = await client.get("/v1/tasks", headers=headers)
    assert refused.status_code == 401
    assert again.status_code == 200
