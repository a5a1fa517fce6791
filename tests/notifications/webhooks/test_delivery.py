"""Deliveries by a real worker to a real receiver, checked with the official verifier."""

from __future__ import annotations

import httpx
import orjson
from sqlalchemy import update
from standardwebhooks import Webhook
from starlette.responses import JSONResponse

from service.config import Settings
from service.db import create_engine
from service.notifications.webhooks.fanout import WEBHOOK
from service.notifications.webhooks.sender import UNSIGNABLE
from tests.fixtures.app import running_worker
from tests.fixtures.upstream import Upstream
from tests.helpers import create_task, http_task, sync
from tests.notifications.webhooks.conftest import (
    Receiver,
    deliveries,
    emit,
    settled,
    subscribe,
)


async def test_a_failed_delivery_is_retried_with_the_same_id_until_accepted_and_verifies(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    receiver: Receiver,
    upstream: Upstream,
    worker: object,
) -> None:
    hook = await subscribe(client, auth, receiver.url, ["run.succeeded"])
    receiver.script = [500, "hang"]  # a 500, then no answer within the timeout, then 204
    url = upstream.route("/items", lambda _request: JSONResponse([{"id": 1}]))
    task = await create_task(client, auth, http_task(url))
    run = await sync(client, auth, task["id"])
    assert run["status"] == "succeeded"

    received = await receiver.wait(3)
    verifier = Webhook(hook["secret"])
    payloads = [verifier.verify(seen.body, seen.headers) for seen in received]
    assert {seen.headers["webhook-id"] for seen in received} == {payloads[0]["id"]}
    assert all(payload == payloads[0] for payload in payloads)  # the same bytes each time
    [event] = (await client.get("/v1/events?type=run.succeeded", headers=auth)).json()["items"]
    assert set(payloads[0]) == {"id", "seq", "type", "timestamp", "data"}  # the feed's event
    assert (payloads[0]["id"], payloads[0]["seq"]) == (event["id"], event["seq"])
    assert payloads[0]["data"] == event["data"]
    assert payloads[0]["data"]["run_id"] == run["id"]

    [delivery] = await settled(client, auth, hook["id"], 1)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 3
    assert delivery["message_id"] == event["id"]
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, None, 204]
    assert delivery["attempt_log"][0]["error"] == "HTTP 500"
    assert delivery["attempt_log"][1]["error"].startswith("timeout")
    assert delivery["next_attempt_at"] is None and delivery["last_status_code"] == 204


async def test_only_subscribed_types_from_the_moment_of_subscribing_are_delivered(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    receiver: Receiver,
    settings: Settings,
    worker: object,
) -> None:
    await emit(settings, "acme", ["run.failed"])  # before the endpoint exists: not sent
    hook = await subscribe(client, auth, receiver.url, ["run.failed", "task.paused"])
    ids = await emit(settings, "acme", ["run.failed", "run.succeeded", "task.paused"])
    received = await receiver.wait(2)
    assert sorted(seen.headers["webhook-id"] for seen in received) == sorted([ids[0], ids[2]])
    items = await settled(client, auth, hook["id"], 2)
    assert len(items) == 2


async def test_a_delivery_gives_up_after_the_last_retry(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    receiver: Receiver,
    settings: Settings,
    worker: object,
) -> None:
    hook = await subscribe(client, auth, receiver.url, ["*"])
    receiver.script = [503, 503, 503, 503, 503]
    await emit(settings, "acme", ["run.failed"])
    [delivery] = await settled(client, auth, hook["id"], 1)
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 1 + len(settings.webhook_retry_delays)
    assert len(receiver.received) == delivery["attempts"]


async def test_ping_goes_to_the_endpoint_only_and_never_into_the_feed(
    client: httpx.AsyncClient, auth: dict[str, str], receiver: Receiver, worker: object
) -> None:
    hook = await subscribe(client, auth, receiver.url, ["run.failed"])
    response = await client.post(f"/v1/webhooks/{hook['id']}/test", headers=auth)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending" and response.json()["event_type"] == "ping"
    [seen] = await receiver.wait(1)
    payload = Webhook(hook["secret"]).verify(seen.body, seen.headers)
    assert payload["type"] == "ping" and payload["data"]["webhook_id"] == hook["id"]
    assert seen.headers["webhook-id"] == response.json()["message_id"]
    assert (await client.get("/v1/events", headers=auth)).json()["items"] == []


async def test_during_a_rotation_both_secrets_verify_and_after_it_only_the_new(
    client: httpx.AsyncClient, auth: dict[str, str], receiver: Receiver, worker: object
) -> None:
    hook = await subscribe(client, auth, receiver.url, ["*"])
    rotate = f"/v1/webhooks/{hook['id']}/rotate-secret"
    rotated = (await client.post(rotate, json={"grace_seconds": 3600}, headers=auth)).json()
    assert rotated["secret"] != hook["secret"] and rotated["previous_secret_until"]
    await client.post(f"/v1/webhooks/{hook['id']}/test", headers=auth)
    [seen] = await receiver.wait(1)
    assert len(seen.headers["webhook-signature"].split(" ")) == 2
    Webhook(rotated["secret"]).verify(seen.body, seen.headers)
    Webhook(hook["secret"]).verify(seen.body, seen.headers)

    again = (await client.post(rotate, json={"grace_seconds": 0}, headers=auth)).json()
    assert again["previous_secret_until"] is None
    await client.post(f"/v1/webhooks/{hook['id']}/test", headers=auth)
    _, seen = await receiver.wait(2)
    assert len(seen.headers["webhook-signature"].split(" ")) == 1
    Webhook(again["secret"]).verify(seen.body, seen.headers)


async def test_an_endpoint_failing_for_too_long_is_disabled_with_an_event(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    receiver: Receiver,
    upstream: Upstream,
    settings: Settings,
) -> None:
    watcher = Receiver(upstream.base_url + "/watcher")
    upstream.route("/watcher", watcher.handle)
    failing = await subscribe(client, auth, receiver.url, ["run.failed"])
    await subscribe(client, auth, watcher.url, ["webhook.disabled"])
    receiver.script = [500] * 10
    quick = settings.model_copy(update={"webhook_disable_after_days": 0.3 / 86_400})
    async with running_worker(quick):
        await emit(settings, "acme", ["run.failed"])
        [seen] = await watcher.wait(1)
    event = orjson.loads(seen.body)
    assert event["type"] == "webhook.disabled"
    assert event["data"]["webhook_id"] == failing["id"] and event["data"]["reason"] == "failing"
    endpoint = (await client.get(f"/v1/webhooks/{failing['id']}", headers=auth)).json()
    assert endpoint["disabled"] is True and endpoint["disabled_reason"] == "failing"
    [delivery] = await deliveries(client, auth, failing["id"])
    assert delivery["status"] == "failed" and 2 <= delivery["attempts"] <= 4
    feed = (await client.get("/v1/events?type=webhook.disabled", headers=auth)).json()
    assert [e["id"] for e in feed["items"]] == [seen.headers["webhook-id"]]


async def test_an_endpoint_whose_secret_cannot_be_read_fails_alone(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    receiver: Receiver,
    settings: Settings,
    worker: object,
) -> None:
    broken = await subscribe(client, auth, receiver.url + "?broken", ["*"])
    fine = await subscribe(client, auth, receiver.url, ["*"])
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(WEBHOOK).where(WEBHOOK.c.id == broken["id"]).values(secret_ciphertext="x")
            )
    finally:
        await engine.dispose()
    for hook in (broken, fine):
        await client.post(f"/v1/webhooks/{hook['id']}/test", headers=auth)
    [seen] = await receiver.wait(1)
    Webhook(fine["secret"]).verify(seen.body, seen.headers)
    [delivery] = await deliveries(client, auth, broken["id"])
    while delivery["attempts"] == 0:
        [delivery] = await deliveries(client, auth, broken["id"])
    assert delivery["attempt_log"][0]["error"] == UNSIGNABLE
    assert len(receiver.received) == 1
