"""Each API key has a request rate, shared by every API process through Redis."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from redis.asyncio import Redis

from service.broker.rate_limit import LocalShares, RateLimiter, Verdict
from service.config import Settings
from tests.fixtures.app import MakeKey, api_client


async def test_a_key_past_its_burst_gets_429_with_retry_after_and_ratelimit_headers(
    settings: Settings, make_key: MakeKey
) -> None:
    limited = settings.model_copy(update={"api_rate_per_second": 1, "api_rate_burst": 3})
    hasty, calm = await make_key("hasty"), await make_key("calm")
    async with api_client(limited) as first, api_client(limited) as second:
        answers = [
            (await (first if n % 2 else second).get("/v1/tasks", headers=hasty)).status_code
            for n in range(4)
        ]
        refused = await first.get("/v1/tasks", headers=hasty)
        other_key = await second.get("/v1/tasks", headers=calm)

    assert answers == [200, 200, 200, 429]  # one budget across both API processes
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"] == "urn:backsync:problem:rate-limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert refused.headers["RateLimit-Policy"] == '"api";q=3;w=3'
    assert re.fullmatch(r'"api";r=0;t=\d+', refused.headers["RateLimit"])
    assert other_key.status_code == 200  # per key, not per tenant or process


async def test_no_limit_when_the_rate_is_zero(settings: Settings, make_key: MakeKey) -> None:
    key = await make_key("free")
    async with api_client(settings) as client:
        statuses = {(await client.get("/v1/tasks", headers=key)).status_code for _ in range(30)}
    assert statuses == {200}


async def test_a_busy_key_takes_its_calls_in_batches_and_never_past_its_burst(
    settings: Settings,
) -> None:
    """The API's share of a key's calls (`LocalShares`): fewer Redis calls than
    requests, and exactly the burst allowed, as with one Redis call per request."""
    redis = Redis.from_url(settings.redis_url or "")
    limiter = RateLimiter(redis, settings.redis_key_prefix, name="t", rate=0.01, burst=40)
    asked: list[int] = []
    take = limiter.take

    async def counted(key: str, **options: Any) -> Verdict | None:
        asked.append(options.get("want", 1))
        return await take(key, **options)

    limiter.take = counted  # type: ignore[method-assign]
    shares = LocalShares(limiter, max_batch=8, lifetime=60)
    try:
        verdicts = [await shares.check("busy") for _ in range(41)]
        await asyncio.sleep(0.05)  # a top-up in flight lands
    finally:
        await redis.aclose()
    allowed = [v for v in verdicts if v is not None and v.retry_after is None]
    assert len(allowed) == 40
    refused = verdicts[-1]
    assert refused is not None and refused.retry_after is not None
    assert len(asked) < 15
    assert max(asked) <= 8


async def test_calls_a_share_did_not_make_are_given_back(settings: Settings) -> None:
    """A share that lapses unused hands its calls back with the key's next request to
    Redis: another process is not refused for calls nobody made."""
    redis = Redis.from_url(settings.redis_url or "")
    limiter = RateLimiter(redis, settings.redis_key_prefix, name="t", rate=0.01, burst=4)
    first = LocalShares(limiter, max_batch=4, lifetime=0.1)
    try:
        granted = [await limiter.take("k", want=3) for _ in range(2)]
        assert [v.granted for v in granted if v is not None] == [3, 1]  # the burst: 4
        refused = await limiter.take("k")
        assert refused is not None and refused.retry_after is not None
        given_back = await limiter.take("k", refund=2)
        assert given_back is not None and given_back.granted == 1  # one of the two back
        # through a share: 1 + 2 calls taken, 2 made, then it lapses with one unmade
        shared = [await first.check("j") for _ in range(2)]
        assert all(v is not None and v.retry_after is None for v in shared)
        await asyncio.sleep(0.15)
        assert (await first.check("j")) is not None
        left = await limiter.take("j", want=4)
    finally:
        await redis.aclose()
    assert left is not None and left.granted == 1  # 3 made, the unmade one given back
