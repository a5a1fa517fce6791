"""A stand-in wearable API (think Oura or Fitbit "daily activity"), served on loopback.

It behaves like the real ones do: a bearer token, `start_date` filtering, cursor
pagination through `next_token`, ETags with 304s, and `503 Retry-After: 1` on the first
visits to page 3: as many as the engine tries a request in place, so the first attempt
ends there and the demo shows the run's next attempt resuming at page 3.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import date, timedelta
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.sync import REQUEST_RETRY

TOKEN = "demo-wearable-token-4242"  # noqa: S105 - a demo credential, shown to the user
PATH = "/v2/usercollection/daily_activity"
PAGE_SIZE = 25
DAYS = 120
OUTAGE = REQUEST_RETRY.tries
"""Requests for page 3 answered 503: every try of the first attempt."""


def _day(index: int) -> dict[str, Any]:
    day = date(2026, 1, 1) + timedelta(days=index)
    steps = 4000 + (index * 7919) % 9000
    return {
        "id": f"da_{day.isoformat()}",
        "day": day.isoformat(),
        "timestamp": f"{day.isoformat()}T23:59:00+00:00",
        "steps": steps,
        "active_calories": steps // 25,
        "met": {"interval": 60, "average": round(1.2 + (index % 10) / 10, 1)},
    }


class DemoUpstream:
    def __init__(self) -> None:
        self.records = [_day(i) for i in range(DAYS)]
        self._failures = 0
        app = Starlette(routes=[Route(PATH, self._daily_activity)])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the demo upstream did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}{PATH}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    async def _daily_activity(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"detail": "invalid token"}, status_code=401)
        start = int(request.query_params.get("next_token") or 0)
        if start == 2 * PAGE_SIZE and self._failures < OUTAGE:
            self._failures += 1
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "1"})
        since = request.query_params.get("start_date", "")
        matching = [r for r in self.records if r["day"] >= since]
        page = matching[start : start + PAGE_SIZE]
        following = start + PAGE_SIZE
        body = orjson.dumps(
            {"data": page, "next_token": str(following) if following < len(matching) else None}
        )
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type="application/json", headers={"ETag": etag})
