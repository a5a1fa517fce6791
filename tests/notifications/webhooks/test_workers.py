"""Real worker processes: each (endpoint, event) is delivered once by any number of
workers, and a worker killed mid-delivery loses nothing (at least once, same id)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlmodel import col
from standardwebhooks import Webhook

from service.config import Settings
from service.db import create_engine
from service.models import WebhookDelivery
from tests.fixtures.app import SpawnWorker
from tests.notifications.webhooks.conftest import Receiver, emit, settled, subscribe

FAST = {"webhook_poll_seconds": "0.05", "webhook_retry_delays": "0.2,0.2,0.2"}


async def _rows_per_event(settings: Settings) -> Counter[tuple[str, int | None]]:
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            query = select(
                col(WebhookDelivery.webhook_id), col(WebhookDelivery.event_seq), func.count()
            ).group_by(col(WebhookDelivery.webhook_id), col(WebhookDelivery.event_seq))
            rows = (await connection.execute(query)).all()
    finally:
        await engine.dispose()
    return Counter({(webhook_id, seq): count for webhook_id, seq, count in rows})


async def test_two_workers_deliver_each_event_to_each_endpoint_exactly_once(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    receiver: Receiver,
    settings: Settings,
    spawn_worker: SpawnWorker,
) -> None:
    hooks = [await subscribe(client, auth, f"{receiver.url}?to={n}", ["*"]) for n in range(3)]
    for _ in range(2):
        spawn_worker(**FAST)
    await asyncio.sleep(1.0)  # both subscribed to the doorbell
    ids: list[str] = []
    for _ in range(20):
        ids += await emit(settings, "acme", ["run.succeeded"] * 10)
    received = await receiver.wait(len(ids) * len(hooks), timeout=60)
    await asyncio.sleep(0.5)  # anything sent twice would have arrived by now
    assert len(receiver.received) == len(ids) * len(hooks)
    for n, hook in enumerate(hooks):
        mine = [seen for seen in received if seen.query["to"] == str(n)]
        verifier = Webhook(hook["secret"])
        assert sorted(verifier.verify(seen.body, seen.headers)["id"] for seen in mine) == sorted(
            ids
        )
    rows = await _rows_per_event(settings)
    assert len(rows) == len(ids) * len(hooks) and set(rows.values()) == {1}
    for hook in hooks:
        items = await settled(client, auth, hook["id"], 1)
        assert {item["status"] for item in items} == {"succeeded"}
        assert {item["attempts"] for item in items} == {1}


async def test_a_worker_killed_mid_delivery_loses_nothing(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    receiver: Receiver,
    settings: Settings,
    spawn_worker: SpawnWorker,
) -> None:
    hook = await subscribe(client, auth, receiver.url, ["*"])
    receiver.script, receiver.hang_seconds = ["hang"], 30.0  # the first request never ends
    first = spawn_worker(**FAST, webhook_timeout_seconds="3")
    await asyncio.sleep(1.0)
    ids = await emit(settings, "acme", ["run.failed"] * 20)
    await receiver.wait(1)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    spawn_worker(**FAST, webhook_timeout_seconds="3")

    items = await _all_settled(client, auth, hook["id"], len(ids))
    assert {item["status"] for item in items} == {"succeeded"}
    assert {item["message_id"] for item in items} == set(ids)
    arrivals = Counter(seen.headers["webhook-id"] for seen in receiver.received)
    assert set(arrivals) == set(ids)  # every event arrived
    for item in items:  # more than once only for an attempt that was cut short
        assert arrivals[item["message_id"]] <= item["attempts"]
    hung = receiver.received[0].headers["webhook-id"]
    assert arrivals[hung] == 2
    for seen in receiver.received:
        Webhook(hook["secret"]).verify(seen.body, seen.headers)
    assert set((await _rows_per_event(settings)).values()) == {1}


async def _all_settled(
    client: httpx.AsyncClient, auth: dict[str, str], webhook_id: str, count: int
) -> list[dict[str, Any]]:
    for _ in range(1500):
        response = await client.get(
            f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": 200}, headers=auth
        )
        items: list[dict[str, Any]] = response.json()["items"]
        if len(items) == count and all(item["status"] != "pending" for item in items):
            return items
        await asyncio.sleep(0.02)
    raise AssertionError(f"not all settled: {items}")
