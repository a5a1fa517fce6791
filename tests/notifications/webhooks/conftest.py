"""Webhook tests: fast retry settings, a real receiver on loopback, and event writers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import col
from starlette.requests import Request
from starlette.responses import Response

from service.broker.queue import Queue
from service.config import Settings
from service.db import create_engine, create_sessionmaker, transaction
from service.models import Tenant
from service.notifications.outbox import NewEvent, append
from tests.fixtures.upstream import Upstream

TIMEOUT = 0.5


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Retries after 0.2 s, a 0.5 s timeout, a 50 ms poll: a day of retries in a second."""
    return settings.model_copy(
        update={
            "webhook_retry_delays": [0.2, 0.2, 0.2],
            "webhook_timeout_seconds": TIMEOUT,
            "webhook_poll_seconds": 0.05,
        }
    )


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    query: dict[str, str]


@dataclass
class Receiver:
    """An endpoint on the test's loopback server: answers each request with the next of
    `script` (a status, or `"hang"`: no answer before the sender's timeout), then 204."""

    url: str
    script: list[int | str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    hang_seconds: float = TIMEOUT * 4

    async def handle(self, request: Request) -> Response:
        self.received.append(
            Received(
                dict(request.headers),
                await request.body(),
                time.monotonic(),
                dict(request.query_params),
            )
        )
        step = self.script.pop(0) if self.script else 204
        if step == "hang":
            await asyncio.sleep(self.hang_seconds)
            return Response(status_code=200)
        assert isinstance(step, int)
        return Response(b"nope" if step >= 300 else b"", status_code=step)

    async def wait(self, count: int, timeout: float = 15) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} deliveries arrived")
            await asyncio.sleep(0.01)
        return self.received


@pytest.fixture
def receiver(upstream: Upstream) -> Receiver:
    hook = Receiver(upstream.base_url + "/hook")
    upstream.route("/hook", hook.handle)
    return hook


async def subscribe(
    client: httpx.AsyncClient, auth: dict[str, str], url: str, events: list[str]
) -> dict[str, Any]:
    response = await client.post("/v1/webhooks", json={"url": url, "events": events}, headers=auth)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def deliveries(
    client: httpx.AsyncClient, auth: dict[str, str], webhook_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=auth)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def settled(
    client: httpx.AsyncClient, auth: dict[str, str], webhook_id: str, count: int
) -> list[dict[str, Any]]:
    """The endpoint's deliveries once `count` of them are no longer pending."""
    deadline = time.monotonic() + 15
    while True:
        items = await deliveries(client, auth, webhook_id)
        if sum(item["status"] != "pending" for item in items) >= count:
            return items
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries still pending: {items}")
        await asyncio.sleep(0.02)


async def emit(settings: Settings, tenant: str, types: list[str]) -> list[str]:
    """Write events as any Backsync writer does (the outbox, in a transaction), then ring
    the workers as an API route does after its commit; returns their ids."""
    engine = create_engine(settings.database_url)
    events = [NewEvent(type_, {"n": n}) for n, type_ in enumerate(types)]
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            tenant_id = (
                await session.execute(select(col(Tenant.id)).where(col(Tenant.name) == tenant))
            ).scalar_one()
            await append(session, tenant_id, events)
    finally:
        await engine.dispose()
    queue = await Queue.connect(settings)
    try:
        await queue.webhooks_due()
    finally:
        await queue.close()
    return [event.id for event in events]
