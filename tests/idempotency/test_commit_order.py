"""A response goes out only after its transaction committed and its key was recorded.

Otherwise a client that acts on a 201 at once could miss the task (trigger it with an
Idempotency-Key, get a 404, and have that 404 stored and replayed for a day), and its
immediate retry would get 409 instead of the replay. ASGITransport hides the order (it
returns once the app is done), so this test drives the ASGI app itself and looks at the
database when the response starts.
"""

from __future__ import annotations

import json

from asgi_lifespan import LifespanManager
from starlette.types import Message

from service.app import create_app
from service.config import Settings
from service.db import SessionMaker
from tests.helpers import http_task
from tests.idempotency.conftest import sql


async def test_the_task_and_its_key_are_committed_before_the_201_is_sent(
    settings: Settings, auth: dict[str, str], sessionmaker: SessionMaker
) -> None:
    body = json.dumps(http_task("https://api.example.com/items")).encode()
    headers = {**auth, "Content-Type": "application/json", "Idempotency-Key": "k"}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/tasks",
        "raw_path": b"/v1/tasks",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("backsync", 80),
    }
    seen_at_start: list[tuple[int, list[dict[str, object]]]] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 201
            tasks = await sql(sessionmaker, "SELECT id FROM task")
            keys = await sql(sessionmaker, "SELECT state, status_code FROM idempotency_key")
            seen_at_start.append((len(tasks), keys))

    app = create_app(settings)
    async with LifespanManager(app) as manager:
        await manager.app(scope, receive, send)

    assert seen_at_start == [(1, [{"state": "completed", "status_code": 201}])]
