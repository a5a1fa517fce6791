"""Each API key has a request rate, shared by every API process through Redis."""

from __future__ import annotations

import re

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
